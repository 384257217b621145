"""The offline OOD profiles: ten classes of grey images upsampled to RGB, some held out as near-OOD.

- ``digits``: scikit-learn's handwritten digits (1,797 real 8x8 scans,
  shipped with the package). Held out: 8 and 9.
- ``animals``: the ``animal-mnist`` package (MIT; 10,000 28x28 silhouettes,
  1,000 per animal). Held out: dog, horse and sheep, because each has a
  close look-alike among the ID animals (cat; zebra and cow; cow and bear),
  so the near-OOD set is genuinely near: a detector must tell shapes apart,
  not just notice "not a quadruped".

Splits: ``train`` / ``test`` (a fixed stratified 70/30 split of the ID
classes, labels renumbered 0..C-1), ``ood`` (the held-out classes, near-OOD)
and the far-OOD sets ``far-<kind>``: the other profile's images
(``far-animals`` for digits: every 5th, 2,000; ``far-digits`` for animals), ``far-noise``
(uniform grey noise) and ``far-inverted`` (the ID test images, inverted).
``profile_ood_sets(profile)`` returns all near- and far-OOD sets at once.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .images import DataUnavailableError, ImageData

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_HOLDOUT = (8, 9)
# Label order of animal-mnist (checked by eye on a grid of each label's first images).
ANIMAL_WORDS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
ANIMALS_HOLDOUT = (4, 7, 8)  # dog, horse, sheep: see the module docstring
FAR_KINDS = {"digits": ("animals", "noise", "inverted"), "animals": ("digits", "noise", "inverted")}
SPLITS = ("train", "test", "ood")
N_NOISE_IMAGES = 1000
MAX_FAR_IMAGES = 2000  # the other profile as far-OOD: every n-th image (animals: 2,000 of 10,000, 200 per animal)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else.

    animal-mnist ships its arrays as pickles, and ``pickle.load`` runs
    whatever callable a pickle names (``os.system`` included). This
    unpickler admits only the three globals an ndarray pickle needs (the
    array reconstructor, ``ndarray`` and ``dtype``) and refuses every other
    name with ``pickle.UnpicklingError``; so a tampered wheel can at worst
    give wrong numbers, never run code. Never replace it by ``pickle.load``.
    """

    @staticmethod
    @functools.cache
    def _allowed() -> dict[tuple[str, str], object]:
        try:
            from numpy._core.multiarray import _reconstruct  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]  # numpy 1.x's name for the same function
        # Pickles written by numpy 1.x name numpy.core, those of 2.x numpy._core: map both to the object
        # directly instead of importing the deprecated numpy.core module.
        return {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str):
        try:
            return self._allowed()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to unpickle {module}.{name}: only numpy arrays are allowed"
            ) from None


def load_numpy_pickle(path: str | Path) -> np.ndarray:
    """One ndarray from a (optionally gzip-compressed) pickle, through ``NumpyOnlyUnpickler``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        obj = NumpyOnlyUnpickler(f).load()
    if not isinstance(obj, np.ndarray):
        raise pickle.UnpicklingError(f"{path}: expected a numpy array, got {type(obj).__name__}")
    return obj


def animal_mnist_folder() -> Path:
    """Where the installed ``animal-mnist`` wheel keeps its data (found without importing the package)."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            "dataset",
            "the animals profile needs the animal-mnist package: pip install --no-deps animal-mnist==0.4 "
            "(make setup does this)",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


@functools.cache
def _animals_raw() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 silhouettes (uint8, 28x28) and labels, read once per process."""
    folder = animal_mnist_folder()
    try:
        x = load_numpy_pickle(folder / "animal_data_version_3.gz")
        y = load_numpy_pickle(folder / "animal_label_version_3.gz")
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DataUnavailableError("dataset", f"animal-mnist data in {folder} cannot be read: {exc}") from None
    if x.shape != (len(y), 28, 28) or y.min() < 0 or y.max() > 9:
        raise DataUnavailableError(
            "dataset", f"animal-mnist data in {folder} has unexpected shapes {x.shape}, {y.shape}"
        )
    return x, y.astype(np.int64)


@functools.cache
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def _to_rgb(images: np.ndarray, image_size: int) -> torch.Tensor:
    """(N, h, w) grey in [0, 1] -> (N, 3, S, S) float in [0, 1], bilinear resize."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if x.shape[-1] != image_size:
        # antialias when shrinking, so thin strokes (zebra stripes) average out instead of aliasing
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=image_size < x.shape[-1]
        )
    return x.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True)
class OfflineProfile:
    """An offline ten-class profile: its raw grey images, class words, held-out classes and defaults."""

    name: str
    words: tuple[str, ...]
    holdout: tuple[int, ...]
    raw: Callable[[], tuple[np.ndarray, np.ndarray]]
    native_size: int
    default_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def arrays(self, image_size: int) -> tuple[torch.Tensor, np.ndarray]:
        images, labels = self.raw()
        grey = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
        return _cached_rgb(self.name, image_size, grey), labels


_RGB_CACHE: dict[tuple[str, int], torch.Tensor] = {}


def _cached_rgb(name: str, image_size: int, grey: np.ndarray) -> torch.Tensor:
    key = (name, image_size)
    if key not in _RGB_CACHE:
        _RGB_CACHE[key] = _to_rgb(grey, image_size)
    return _RGB_CACHE[key]


OFFLINE_PROFILES = {
    # means/stds: roughly each profile's pixel statistics at its default size
    "digits": OfflineProfile("digits", DIGIT_WORDS, DIGITS_HOLDOUT, _digits_raw, 8, 16, (0.3,) * 3, (0.4,) * 3),
    "animals": OfflineProfile("animals", ANIMAL_WORDS, ANIMALS_HOLDOUT, _animals_raw, 28, 16, (0.27,) * 3, (0.37,) * 3),
}


def offline_profile(profile: str) -> OfflineProfile:
    """The offline profile of that name; ``DataUnavailableError`` naming ``dataset`` otherwise."""
    if profile not in OFFLINE_PROFILES:
        raise DataUnavailableError(
            "dataset", f"unknown offline profile {profile!r}; choose {', '.join(OFFLINE_PROFILES)}"
        )
    return OFFLINE_PROFILES[profile]


def check_holdout(profile: OfflineProfile, image_size: int, holdout: tuple[int, ...]) -> None:
    if image_size < 8:
        raise DataUnavailableError("image_size", f"must be at least 8, got {image_size}")
    bad = [h for h in holdout if not 0 <= h < len(profile.words)]
    if bad or len(set(holdout)) != len(holdout) or len(holdout) > len(profile.words) - 2:
        raise DataUnavailableError(
            "holdout",
            f"held-out classes must be distinct in 0..{len(profile.words) - 1} and leave two ID classes, got {holdout}",
        )


def _far_images(
    profile: OfflineProfile, kind: str, image_size: int, holdout: tuple[int, ...], test_fraction: float, seed: int
) -> torch.Tensor:
    if kind == "noise":
        g = torch.Generator().manual_seed(12345)  # fixed: the same noise set for every run
        grey = torch.rand(N_NOISE_IMAGES, 1, image_size, image_size, generator=g)
        return grey.expand(-1, 3, -1, -1).contiguous()
    if kind == "inverted":
        test = load_profile_split(
            profile.name, "test", image_size=image_size, holdout=holdout, test_fraction=test_fraction, seed=seed
        )
        assert isinstance(test.dataset, TensorDataset)  # the profiles' splits are tensors
        return 1.0 - test.dataset.tensors[0]
    other = OFFLINE_PROFILES[kind].arrays(image_size)[0]  # the other profile, all ten classes
    return other[:: max(1, len(other) // MAX_FAR_IMAGES)][:MAX_FAR_IMAGES]


def load_profile_split(
    profile: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    holdout: tuple[int, ...] | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> ImageData:
    """One split of an offline profile (see the module docstring).

    ID classes are renumbered 0..C-1 in word order; ``class_names`` are the
    English words (the anchors' prompt words). Far-OOD sets carry label -1.
    ``extra`` records the held-out classes and ``ood_kind`` (near / far).
    """
    from sklearn.model_selection import train_test_split

    p = offline_profile(profile)
    image_size = image_size or p.default_size
    holdout = tuple(p.holdout if holdout is None else holdout)
    far_splits = tuple(f"far-{k}" for k in FAR_KINDS[profile])
    if split not in SPLITS + far_splits:
        raise DataUnavailableError("split", f"unknown split {split!r}; choose one of {', '.join(SPLITS + far_splits)}")
    check_holdout(p, image_size, holdout)
    id_classes = [c for c in range(len(p.words)) if c not in holdout]
    extra = {"holdout": list(holdout), "id_classes": id_classes, "ood_kind": None}
    if profile == "digits":
        extra["id_digits"] = id_classes
    name = f"{profile}-{split}"
    if split.startswith("far-"):
        x = _far_images(p, split[4:], image_size, holdout, test_fraction, seed)
        ds = TensorDataset(x, torch.full((len(x),), -1, dtype=torch.int64))
        return ImageData(ds, [], image_size, p.mean, p.std, name=name, extra={**extra, "ood_kind": "far"})
    x, y = p.arrays(image_size)
    is_id = np.isin(y, id_classes)
    if split == "ood":
        remap = np.full(len(p.words), -1)
        remap[list(holdout)] = np.arange(len(holdout))
        ds = TensorDataset(x[torch.from_numpy(~is_id)], torch.from_numpy(remap[y[~is_id]]))
        return ImageData(
            ds, [p.words[c] for c in holdout], image_size, p.mean, p.std, name=name, extra={**extra, "ood_kind": "near"}
        )
    idx = np.flatnonzero(is_id)
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, stratify=y[idx], random_state=seed)
    chosen = np.sort(train_idx if split == "train" else test_idx)
    remap = np.full(len(p.words), -1)
    remap[id_classes] = np.arange(len(id_classes))
    ds = TensorDataset(x[torch.from_numpy(chosen)], torch.from_numpy(remap[y[chosen]]))
    return ImageData(ds, [p.words[c] for c in id_classes], image_size, p.mean, p.std, name=name, extra=extra)


def profile_ood_sets(
    profile: str, *, image_size: int | None = None, holdout: tuple[int, ...] | None = None
) -> dict[str, ImageData]:
    """Every OOD set of an offline profile (and holdout) by name: ``near:<held-out words>`` first, then
    ``far:<kind>``."""
    offline_profile(profile)
    near = load_profile_split(profile, "ood", image_size=image_size, holdout=holdout)
    sets = {f"near:{'+'.join(near.class_names)}": near}
    for kind in FAR_KINDS[profile]:
        sets[f"far:{kind}"] = load_profile_split(profile, f"far-{kind}", image_size=image_size, holdout=holdout)
    return sets


@functools.cache
def profile_data_hash(profile: str) -> str:
    """sha256 of a profile's raw images and labels (12 hex digits): names the data a split's assets are built
    from, so a changed dataset never meets assets cached from the old one."""
    images, labels = offline_profile(profile).raw()
    h = hashlib.sha256()
    for a in (images, labels):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]
