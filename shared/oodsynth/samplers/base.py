"""What every sampler shares: the result type, input checks, blocking and diagnostics.

A sampler only has to turn (fit, classes, n, rng) into unit vectors; this base
class validates the request, splits it into memory-bounded blocks of
(classes x chains), computes the four diagnostics and rescales to the anchor
norm, so all samplers report the same things the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydantic import BaseModel
from threadpoolctl import threadpool_limits

from ..bank import FeatureBank
from ..deadline import check_deadline, time_budget
from ..densities import ClassDensities
from ..errors import InputError
from ..sphere import unit_rows
from .anchor_classifier import margin_and_rival, unit_anchors
from .knn import kth_neighbor_distance

DEFAULT_KNN_K = 300  # DREAM-OOD's K; capped at the class size
ROWS_PER_BLOCK = 32_768  # chains processed together (bounds memory at ~100 MB of float32 in 768-d)

ProgressFn = Callable[[int, int], None]


@dataclass
class SampleResult:
    vectors: np.ndarray  # float32 (M, D), scaled to the class anchor norm unless asked not to
    class_index: np.ndarray  # int64 (M,)
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)  # each (M,)
    method: str = ""
    params: dict = field(default_factory=dict)
    seed: int = 0

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def unit_class_features(bank: FeatureBank, c: int) -> np.ndarray:
    """Class ``c``'s bank features as float32 unit rows (the reference set samplers start from and rank by)."""
    return unit_rows(bank.class_features(int(c)).astype(np.float32), field="features")


def knn_distances(
    bank: FeatureBank, unit_vectors: np.ndarray, class_index: np.ndarray, k: int = DEFAULT_KNN_K
) -> np.ndarray:
    """Distance of each vector to the k-th nearest ID point of its own class (k capped at the class size)."""
    out = np.empty(unit_vectors.shape[0], dtype=np.float64)
    for c in np.unique(class_index):
        rows = class_index == c
        ref = unit_class_features(bank, c)
        out[rows] = kth_neighbor_distance(
            unit_vectors[rows], ref, max(1, min(k, ref.shape[0] - 1))
        )  # the k the samplers rank by
    return out


def compute_diagnostics(
    fit: ClassDensities,
    unit_vectors: np.ndarray,
    class_index: np.ndarray,
    bank: FeatureBank | None = None,
    knn_k: int = DEFAULT_KNN_K,
) -> dict[str, np.ndarray]:
    """The four per-vector diagnostics every sampler reports (``knn_distance`` is NaN without a bank)."""
    logp = fit.score_samples(unit_vectors, class_index)
    cos = np.einsum("md,md->m", unit_vectors.astype(np.float64), fit.means_[class_index])
    knn = knn_distances(bank, unit_vectors, class_index, knn_k) if bank is not None else np.full(len(logp), np.nan)
    return {
        "log_density": logp,
        "id_percentile": fit.percentile(logp, class_index),
        "knn_distance": knn,
        "cos_to_mean": cos,
    }


def margin_diagnostics(fit: ClassDensities, unit_vectors: np.ndarray, class_index: np.ndarray) -> dict[str, np.ndarray]:
    """``margin`` (cosine units, negative = assigned to another class) and ``target_class`` (the best other class)."""
    margin, rival = margin_and_rival(unit_vectors.astype(np.float32), class_index, unit_anchors(fit.anchors_))
    return {"margin": margin, "target_class": rival.astype(np.float64)}


def class_blocks(classes: np.ndarray, n: int, rows: int = ROWS_PER_BLOCK) -> Iterator[tuple[np.ndarray, int]]:
    """Split ``n`` chains for each class into (class group, chains) blocks of at most ~``rows`` chains."""
    per_block = min(n, rows)
    group = max(1, rows // per_block)
    for start in range(0, len(classes), group):
        cls = classes[start : start + group]
        for done in range(0, n, per_block):
            yield cls, min(per_block, n - done)


class Sampler:
    """Base of all samplers: subclasses set ``name``, ``Params`` and implement ``_sample_block``."""

    name: ClassVar[str]
    needs_bank: ClassVar[bool] = False
    Params: ClassVar[type[BaseModel]]
    # Chain samplers do many small batched products; OpenBLAS threads cost more than they give
    # there (measured 5x slower on a busy 2-core box), so they run BLAS single-threaded.
    blas_threads: ClassVar[int | None] = None
    # Between-class samplers also report the anchor classifier's margin and the class each vector was pushed to.
    reports_margin: ClassVar[bool] = False

    def __init__(self, **params):
        self.params = self.Params(**params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    # subclasses -----------------------------------------------------------------
    def _sample_block(
        self, fit: ClassDensities, classes: np.ndarray, n: int, rng: np.random.Generator, bank: FeatureBank | None
    ) -> np.ndarray:
        """Unit vectors (K, n, D) for ``classes`` (K,)."""
        raise NotImplementedError

    def _sample_all(self, fit, classes, n, rng, bank, progress: ProgressFn | None) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors (M, D) grouped by class in the order of ``classes``; blocks by default."""
        per_class: dict[int, list[np.ndarray]] = {int(c): [] for c in classes}
        total, done = len(classes) * n, 0
        for cls, nb in class_blocks(classes, n):
            check_deadline()
            block = self._sample_block(fit, cls, nb, rng, bank)
            for c, rows in zip(cls, block):
                per_class[int(c)].append(rows)
            done += len(cls) * nb
            if progress is not None:
                progress(done, total)
        vectors = np.concatenate([np.concatenate(per_class[int(c)]) for c in classes])
        return vectors, np.repeat(classes, n)

    def _knn_k(self) -> int:
        return int(getattr(self.params, "k", DEFAULT_KNN_K))

    # public ---------------------------------------------------------------------
    def sample(
        self,
        fit: ClassDensities,
        n_per_class: int,
        classes: Sequence[int] | None = None,
        seed: int | None = None,
        bank: FeatureBank | None = None,
        scale_to_anchor: bool = True,
        progress: ProgressFn | None = None,
        time_budget_s: float | None = None,
    ) -> SampleResult:
        """``n_per_class`` outlier vectors for each class (all classes when ``classes`` is None).

        ``time_budget_s``: raise ``Unavailable`` once sampling has run this long (``oodsynth.deadline``).
        """
        if not isinstance(fit, ClassDensities) or not hasattr(fit, "quantile_values_"):
            raise InputError("fit", "expected a fitted ClassDensities")
        if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
            raise InputError("n_per_class", f"must be a positive integer, got {n_per_class!r}")
        assert fit.n_classes is not None  # set by fit (quantile_values_ is there)
        cls = fit._check_classes(np.arange(fit.n_classes) if classes is None else list(classes))
        if cls.size == 0:
            raise InputError("classes", "empty list of classes")
        if np.unique(cls).size != cls.size:
            raise InputError("classes", "duplicate class indices")
        if bank is not None and (bank.dim != fit.dim or bank.n_classes != fit.n_classes):
            raise InputError(
                "bank",
                f"shape ({bank.n_classes} classes, dim {bank.dim}) does not match the fit "
                f"({fit.n_classes} classes, dim {fit.dim})",
            )
        if self.needs_bank and bank is None:
            raise InputError("bank", f"the {self.name} sampler needs the ID feature bank")
        if seed is None:
            entropy = np.random.SeedSequence().entropy
            assert isinstance(entropy, int)  # fresh OS entropy when none is given
            seed = int(entropy % 2**31)
        rng = np.random.default_rng(seed)
        with time_budget(time_budget_s), threadpool_limits(self.blas_threads, user_api="blas"):
            unit, class_index = self._sample_all(fit, cls, int(n_per_class), rng, bank, progress)
        unit = unit.astype(np.float32)
        diagnostics = compute_diagnostics(fit, unit, class_index, bank, self._knn_k())
        if self.reports_margin:
            diagnostics.update(margin_diagnostics(fit, unit, class_index))
        vectors = unit * np.linalg.norm(fit.anchors_[class_index], axis=1, keepdims=True) if scale_to_anchor else unit
        return SampleResult(
            vectors=vectors.astype(np.float32),
            class_index=class_index.astype(np.int64),
            diagnostics=diagnostics,
            method=self.name,
            params=self.params.model_dump(mode="json"),
            seed=int(seed),
        )


def validate_band(band: tuple[float, float]) -> tuple[float, float]:
    """A band of ID percentiles ``(low, high)`` with ``0 <= low < high <= 100``."""
    low, high = band
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"band must satisfy 0 <= low < high <= 100, got {band}")
    return (float(low), float(high))
