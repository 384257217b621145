"""What every lab row runs on and shares: the ``Cell`` (one split, seed and settings with its data), the ``Row``
(here, below both ``rows`` and ``peers``, which define rows), the detector's config, training and evaluation, the
seed's pretrained CE-only detector, and the outliers that need no generator."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..data import ImageData, ProfileSplit, image_tensors
from ..decoding.verification import images_to_tensor
from ..training.evaluation import evaluate
from ..training.outlier_mix import smooth_noise
from ..training.report import EvaluationReport, merge_reports
from .assets import LabAssets, _atomic_write
from .pools import decoded_inlier_pool, decoded_test_pool
from .settings import FROM_SCRATCH, LAB_SCORES, LabSettings, detector_params


@dataclass
class Cell:
    """Everything a row needs to run one seed."""

    profile: str
    seed: int
    settings: LabSettings
    train: ImageData
    test: ImageData
    ood_sets: dict[str, ImageData]
    cache: Path
    work: Path
    assets: Callable[[], LabAssets]  # lazy: ce/noise rows never build the generation side
    split: ProfileSplit | None = None  # None: the profile's default split

    def __post_init__(self) -> None:
        if self.split is None:
            self.split = ProfileSplit.default(self.profile)


@dataclass
class CellOutcome:
    report: EvaluationReport
    score: str  # the score the row is ranked by
    info: dict = field(default_factory=dict)


class CellNotRun(LookupError):
    """A cell asked for with ``cached_only`` has no cached result."""


@dataclass(frozen=True)
class Row:
    """One way of building a detector: how it runs on a cell, what it is paired with and what keys its cells."""

    name: str
    run: Callable[[Cell], CellOutcome]
    baseline: str | None = "ce"  # the row it is paired with by seed
    needs_decoder: bool = False
    uses: frozenset[str] = frozenset()  # settings beyond the detector's that its result depends on (cache key)
    uses_assets: bool = True  # built from the generation side: its cache key names the assets
    sampler: str | None = None  # the sampler whose parameters its key names (when it uses "sampler_params")
    kind: str = "ours"  # baseline (CE), peer (another method, the report's "best peer"), posthoc, ours
    noise_outliers: bool = False  # trained on noise: not credited on the far-OOD noise set
    test_scored: bool = False  # ranked by the settings' test_score (trained end to end), not a fixed score

    def trains_on_noise(self, settings: LabSettings) -> bool:
        """Any smooth noise among its outliers (the noise rows, or an outlier mix with ``noise_share``): such a row
        earns no far-OOD credit on the noise set."""
        return self.noise_outliers or ("noise_share" in self.uses and settings.noise_share > 0)

    @property
    def description(self) -> str:
        return (self.run.__doc__ or "").strip().split("\n")[0]


def ood_config(cell: Cell, beta: float, n_outliers: int = 0, *, finetune: bool = True, **extra):
    """The detector's config. The outlier batch grows when needed so that an epoch is one pass over the ID
    images whatever the outlier count: a row and its CE pair then take exactly the same ID steps. With
    ``finetune_epochs`` (and ``finetune``) it fine-tunes the seed's pretrained CE-only detector."""
    from ..training.ood_config import OODTrainConfig

    s = cell.settings
    id_steps = math.ceil(len(cell.train) / s.batch_size)
    ood_batch_size = max(s.ood_batch_size, math.ceil(n_outliers / id_steps))
    epochs, lr = s.epochs_for(len(cell.train)), s.lr
    if finetune and s.finetune_epochs:
        epochs, lr = s.finetune_epochs, s.finetune_lr
        extra["init_classifier"] = str(pretrained_detector(cell))
    return OODTrainConfig.from_recipe(
        s,
        epochs=epochs,
        lr=lr,
        ood_batch_size=ood_batch_size,
        beta=beta,
        ood_loss=s.ood_loss,
        seed=cell.seed,
        dataset=cell.profile,
        mean=cell.train.mean,
        std=cell.train.std,
        **extra,
    )


def pretrained_detector(cell: Cell) -> Path:
    """The seed's CE-only detector trained from scratch (the ``ce`` row's model without fine-tuning): the
    checkpoint every fine-tuning row starts from, trained once and cached."""
    from ..training.classifier import CHECKPOINT_NAME
    from ..training.ood import train_ood

    scratch = cell.settings.model_copy(update=FROM_SCRATCH)
    assert cell.split is not None  # Cell.__post_init__ sets the default split
    path = cell.cache / f"pretrained-{cell.split.key}-s{cell.seed}-{scratch.key(frozenset())}.pt"
    if not path.is_file():
        work = cell.work / "pretrained"
        train_ood(
            ood_config(replace(cell, settings=scratch), 0.0, finetune=False),
            cell.train,
            work,
            device="cpu",
            progress=False,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, (work / CHECKPOINT_NAME).read_bytes())
    return path


def as_float_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    return images_to_tensor(images.float() / 255 if images.dtype == torch.uint8 else images, image_size)


def decoded_inliers(cell: Cell) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The seed's decoded ID images (float, labels, info): per class the first ``decoded_inliers`` share of the
    ID training set that the encoder re-encodes to its own class (a reconstruction drawn as another class would
    be a mislabelled ID image)."""
    s = cell.settings
    pool = decoded_inlier_pool(cell.assets(), cell.seed, s, cell.cache)
    n_per_class = s.per_class(len(cell.train), len(cell.train.class_names), s.decoded_inliers)
    faithful = pool.verification.id_class == pool.class_index
    keep = np.sort(
        np.concatenate(
            [np.flatnonzero((pool.class_index == c) & faithful)[:n_per_class] for c in np.unique(pool.class_index)]
        )
    )
    info = {
        "inlier_pool": len(pool.class_index),
        "inliers": len(keep),
        "inlier_faithful_rate": float(faithful.mean()),
        "inlier_median_id_percentile": float(np.median(pool.verification.id_percentile)),
    }
    x = as_float_images(pool.images[torch.from_numpy(keep)], s.image_size)
    return x, torch.from_numpy(pool.class_index[keep]).long(), info


def train_and_evaluate(
    cell: Cell, outliers: torch.Tensor | None, info: dict | None = None, *, inliers: bool = False
) -> CellOutcome:
    """Train the detector (CE, plus beta * L_ood when ``outliers`` are given) and evaluate it; with ``inliers``
    the seed's decoded ID images join the ID training set (the same epochs, so a few more steps)."""
    from ..training.ood import train_ood

    beta = cell.settings.beta if outliers is not None else 0.0
    train, info = cell.train, dict(info or {})
    if inliers:
        x_in, y_in, inlier_info = decoded_inliers(cell)
        x, y = image_tensors(cell.train)
        train = replace(cell.train, dataset=TensorDataset(torch.cat([x, x_in]), torch.cat([y, y_in])))
        info.update(inlier_info)
    ds = None
    if outliers is not None:
        x = as_float_images(outliers, cell.settings.image_size)
        ds = TensorDataset(x, torch.zeros(len(x), dtype=torch.int64))
    config = ood_config(cell, beta, 0 if ds is None else len(ds))
    clf = train_ood(config, train, cell.work, outliers=ds, device="cpu", progress=False)
    return evaluate_trained(cell, clf, {"n_outliers": 0 if ds is None else len(ds), **info})


def evaluate_trained(cell: Cell, clf, info: dict | None = None, *, train=None, test=None, ood_sets=None) -> CellOutcome:
    """A row's detector trained end to end, scored by energy (and phi) and by every one of ``LAB_SCORES`` (fitted
    on the ID train set), ranked by the settings' ``test_score``: every score a dev-split choice can pick is in the
    cell, so choosing one reruns nothing."""
    from ..training.detectors import evaluate_detectors

    train = cell.train if train is None else train
    test = cell.test if test is None else test
    ood_sets = cell.ood_sets if ood_sets is None else ood_sets
    report = merge_reports(
        evaluate(clf, test, ood_sets, progress=False),
        evaluate_detectors(clf, train, test, ood_sets, names=list(LAB_SCORES), params=detector_params(LAB_SCORES)),
    )
    return CellOutcome(report, cell.settings.test_score, dict(info or {}))


# The decoder-shortcut probe: an extra "OOD" set of every decoded cell, out of the near/far pools (their names start
# with near: and far:). Its AUROC against the real ID test images is how well the detector tells the decoder's look
# on ID content from real ID images: 50 is chance; a detector that learned "decoded => OOD" scores high.
SHORTCUT_SET = "shortcut:decoded-id"
SHORTCUT_PER_CLASS = 40  # decoded reconstructions per ID class (of its first test images)


def with_shortcut_probe(cell: Cell) -> Cell:
    """``cell`` with ``SHORTCUT_SET`` among its OOD sets: decoded reconstructions of its first ID test images."""
    x, y = image_tensors(cell.test)
    size = cell.assets().encoder.config.image_size
    idx = np.concatenate(
        [np.flatnonzero(y.numpy() == c)[:SHORTCUT_PER_CLASS] for c in range(len(cell.test.class_names))]
    )
    pool = decoded_test_pool(cell.assets(), images_to_tensor(x[idx], size), y[idx].numpy(), cell.settings, cell.cache)
    decoded = as_float_images(pool.images, cell.settings.image_size)
    probe = replace(
        cell.test, dataset=TensorDataset(decoded, torch.from_numpy(pool.class_index).long()), name=SHORTCUT_SET
    )
    return replace(cell, ood_sets={**cell.ood_sets, SHORTCUT_SET: probe})


def cheap_outliers(cell: Cell, n_noise: int, n_mixed: int, kind: str, info: dict) -> list[torch.Tensor]:
    """Outliers that need no generator, float at the lab's image size: ``n_noise`` smooth-noise images, then
    ``n_mixed`` ``kind`` mixes of two ID training images of different classes (the mixing peer's maker and
    shares); their counts go into ``info``. The decoded rows' outlier mix and the ``noise+cutmix`` peer."""
    from ..training.mixing import mixing_outliers

    s, parts = cell.settings, []
    if n_noise:
        info["n_noise"] = n_noise
        parts.append(smooth_noise(n_noise, s.image_size, cell.seed))
    if n_mixed:
        info["n_mixed"] = n_mixed
        x, y = image_tensors(cell.train)
        parts.append(as_float_images(mixing_outliers(kind, x, y, n_mixed, seed=cell.seed).images, s.image_size))
    return parts


class LabData:
    """A split's ID sets and OOD sets at one image size, loaded once per process."""

    _cache: dict[tuple[str, str, int], tuple] = {}

    @classmethod
    def get(cls, split: ProfileSplit | str, image_size: int) -> tuple[ImageData, ImageData, dict[str, ImageData]]:
        split = split if isinstance(split, ProfileSplit) else ProfileSplit.default(split)
        key = (split.profile, split.key, image_size)
        if key not in cls._cache:
            cls._cache[key] = (
                split.load("train", image_size),
                split.load("test", image_size),
                split.ood_sets(image_size),
            )
        return cls._cache[key]
