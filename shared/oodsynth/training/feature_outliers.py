"""Feature-space outliers for OOD training: load a drawn sample as vectors, and redraw it from new features.

What ``/sample`` and ``oodsynth sample --out`` produce (vectors + class_index,
plus the sampler and its parameters) is used as-is: a ``StoredSample`` from the
registry, a ``SampleResult``, a sample id, or an ``.npz`` with ``vectors`` and
``class_index`` arrays. Vectors may have any norm (samples come scaled to the
anchor norm); the classifier head normalises them.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import ImageData
from ..errors import InputError


@dataclass
class FeatureOutliers:
    vectors: np.ndarray  # float32 (M, D), any norm
    class_index: np.ndarray  # int64 (M,)
    method: str = ""  # the sampler that drew them ("" when unknown: a bare .npz)
    params: dict = field(default_factory=dict)

    def unit_tensor(self) -> torch.Tensor:
        v = torch.as_tensor(np.asarray(self.vectors, dtype=np.float32))
        return torch.nn.functional.normalize(v, dim=1)

    def n_per_class(self) -> tuple[np.ndarray, int]:
        """The classes present and the (rounded mean) number of vectors each has."""
        classes, counts = np.unique(self.class_index, return_counts=True)
        return classes, max(1, int(round(counts.mean())))


def _from_npz(path: Path) -> FeatureOutliers:
    from ..state.samples import StoredSample

    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if "meta" in files:  # a StoredSample written by `oodsynth sample --out`
                stored = StoredSample.from_bytes(path.read_bytes())
                return FeatureOutliers(stored.vectors, stored.class_index, stored.method, dict(stored.params))
            if not {"vectors", "class_index"} <= files:
                raise ValueError(f"expected arrays 'vectors' and 'class_index', found {sorted(files)}")
            return FeatureOutliers(z["vectors"], z["class_index"])
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise InputError("feature_outliers", f"{path} is not a readable sample .npz ({exc})") from exc


def _from_registry(sample_id: str) -> FeatureOutliers:
    import redis

    from ..state.redis_conn import get_redis
    from ..state.samples import SampleRegistry

    try:
        stored = SampleRegistry(get_redis()).get(sample_id)
    except (redis.exceptions.RedisError, RuntimeError) as exc:
        raise InputError(
            "feature_outliers", f"{sample_id!r} is no file, and Redis cannot be reached to look it up ({exc})"
        ) from exc
    except KeyError:
        raise InputError(
            "feature_outliers", f"no file and no stored sample {sample_id!r} (unknown or expired)"
        ) from None
    return FeatureOutliers(stored.vectors, stored.class_index, stored.method, dict(stored.params))


def load_feature_outliers(source, *, n_classes: int | None = None) -> FeatureOutliers:
    """``FeatureOutliers`` from any of the accepted sources, validated (errors name ``feature_outliers``)."""
    if isinstance(source, FeatureOutliers):
        out = source
    elif hasattr(source, "vectors") and hasattr(source, "class_index"):  # StoredSample, SampleResult
        out = FeatureOutliers(
            source.vectors, source.class_index, getattr(source, "method", ""), dict(getattr(source, "params", {}) or {})
        )
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_file():
            out = _from_npz(path)
        elif path.suffix == ".npz" or isinstance(source, Path):
            raise InputError("feature_outliers", f"no such file: {path}")
        else:
            out = _from_registry(str(source))
    else:
        raise InputError(
            "feature_outliers", f"expected a sample, a sample id or an .npz path, got {type(source).__name__}"
        )
    vectors = np.asarray(out.vectors)
    labels = np.asarray(out.class_index)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or not np.issubdtype(vectors.dtype, np.floating):
        raise InputError(
            "feature_outliers", f"vectors must be a non-empty float (M, D) array, got {vectors.shape} {vectors.dtype}"
        )
    if not np.isfinite(vectors).all() or (np.linalg.norm(vectors, axis=1) == 0).any():
        raise InputError("feature_outliers", "vectors contain NaN/inf or zero rows")
    if labels.shape != (vectors.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            "feature_outliers", f"class_index must be {vectors.shape[0]} integers, got {labels.shape} {labels.dtype}"
        )
    if n_classes is not None and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError("feature_outliers", f"class_index out of range [0, {n_classes})")
    return FeatureOutliers(vectors.astype(np.float32), labels.astype(np.int64), out.method, dict(out.params))


def redraw_feature_outliers(
    model, data: ImageData, current: FeatureOutliers, density_kind: str, seed: int
) -> FeatureOutliers:
    """Draw ``current``'s sampler afresh on the model's current features (same classes and count per class).

    The bank's anchors are the head's weight rows: the classifier that now
    decides the classes, which is what ``boundary_crossing`` needs to cross.
    """
    from ..bank import FeatureBank
    from ..densities import ClassDensities
    from ..encoding.features import extract_features
    from ..samplers import get_sampler

    features, labels = extract_features(model.encoder, data, progress=False)  # unit z, the head's input
    anchors = model.head.weight.detach().float().cpu().numpy()
    bank = FeatureBank.from_arrays(features, labels, anchors, list(data.class_names))
    fit = ClassDensities(density_kind).fit(bank)
    classes, n = current.n_per_class()
    result = get_sampler(current.method, current.params).sample(
        fit, n, classes=classes.tolist(), seed=seed, bank=bank, scale_to_anchor=False
    )
    return FeatureOutliers(result.vectors, result.class_index, current.method, dict(current.params))
