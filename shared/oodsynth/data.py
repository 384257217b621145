"""Image datasets for the encoder and the OOD training job, behind one loader.

Every dataset yields ``(float tensor (3, H, W) in [0, 1], class index)``;
per-channel normalisation lives inside the models (see ``encoder.py``), so
images from the store, the API and torchvision all go through the same
``ToTensor`` path.

Profiles:

- ``cifar10`` / ``cifar100``: torchvision, downloaded into ``root`` when the
  internet is reachable; offline, a ``DataUnavailableError`` says so.
- ``imagefolder:<path>`` (or any existing folder): torchvision ``ImageFolder``.
- ``digits``: scikit-learn's handwritten digits (1,797 real 8x8 scans, shipped
  with the package, so it works offline), upsampled to RGB. Classes
  ``holdout`` (default 8 and 9) are never seen in training and form the
  near-OOD ``ood`` split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_HOLDOUT = (8, 9)
SPLITS = ("train", "test", "ood")

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class DataUnavailableError(RuntimeError):
    """A dataset cannot be loaded (offline download, missing folder); ``option`` names what to change."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


@dataclass
class ImageData:
    """A dataset plus what models need to know about it."""

    dataset: Dataset
    class_names: list[str]
    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    name: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)


def _digits_arrays(image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """All 1,797 digits as (N, 3, S, S) float in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8)
    if image_size != 8:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous(), digits.target.astype(np.int64)


def load_digits_split(
    split: str = "train",
    *,
    image_size: int = 16,
    holdout: tuple[int, ...] = DIGITS_HOLDOUT,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> ImageData:
    """The ``digits`` profile: a fixed stratified split of the ID classes, the held-out classes as ``ood``.

    ID classes are renumbered 0..C-1 in digit order; ``class_names`` are the
    English words (the anchors' prompt words).
    """
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise DataUnavailableError("split", f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if image_size < 8:
        raise DataUnavailableError("image_size", f"must be at least 8 (the digits are 8x8), got {image_size}")
    bad = [h for h in holdout if not 0 <= h <= 9]
    if bad or len(set(holdout)) >= 9:
        raise DataUnavailableError("holdout", f"held-out digits must be distinct in 0..9 and leave two ID classes, got {holdout}")
    x, y = _digits_arrays(image_size)
    id_digits = [d for d in range(10) if d not in holdout]
    is_id = np.isin(y, id_digits)
    mean, std = (0.3,) * 3, (0.4,) * 3  # roughly the upsampled digits' statistics
    extra = {"holdout": list(holdout), "id_digits": id_digits}
    if split == "ood":
        names = [DIGIT_WORDS[d] for d in holdout]
        remap = {d: i for i, d in enumerate(holdout)}
        labels = torch.tensor([remap[int(v)] for v in y[~is_id]])
        ds = TensorDataset(x[torch.from_numpy(~is_id)], labels)
        return ImageData(ds, names, image_size, mean, std, name="digits-ood", extra=extra)
    idx = np.flatnonzero(is_id)
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, stratify=y[idx], random_state=seed)
    chosen = np.sort(train_idx if split == "train" else test_idx)
    remap = np.full(10, -1)
    remap[id_digits] = np.arange(len(id_digits))
    ds = TensorDataset(x[torch.from_numpy(chosen)], torch.from_numpy(remap[y[chosen]]))
    return ImageData(ds, [DIGIT_WORDS[d] for d in id_digits], image_size, mean, std, name=f"digits-{split}", extra=extra)


def _cifar(name: str, split: str, root: Path, download: bool, augment: bool) -> ImageData:
    from torchvision import datasets, transforms

    if split not in ("train", "test"):
        raise DataUnavailableError("split", f"{name} has splits train and test, got {split!r}")
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    transform = transforms.Compose([*steps, transforms.ToTensor()])
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        ds = cls(str(root), train=split == "train", download=download, transform=transform)
    except (RuntimeError, OSError) as exc:  # URLError is an OSError; torchvision raises RuntimeError when absent
        raise DataUnavailableError(
            "data_root",
            f"{name} is not in {root} and could not be downloaded ({type(exc).__name__}: {exc}). "
            f"Put the extracted python version (cifar-*-python) there, or use the offline profile 'digits'.",
        ) from None
    return ImageData(ds, list(ds.classes), 32, CIFAR_MEAN, CIFAR_STD, name=f"{name}-{split}")


def _image_folder(path: Path, image_size: int | None, augment: bool) -> ImageData:
    from torchvision import datasets, transforms

    if not path.is_dir():
        raise DataUnavailableError("dataset", f"image folder {path} does not exist")
    size = image_size or 224
    steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] if augment else [
        transforms.Resize(size), transforms.CenterCrop(size)]
    transform = transforms.Compose([transforms.Lambda(lambda im: im.convert("RGB")), *steps, transforms.ToTensor()])
    try:
        ds = datasets.ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataUnavailableError("dataset", f"{path} is not an ImageFolder (one sub-folder of images per class): {exc}") from None
    return ImageData(ds, list(ds.classes), size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), name=path.name)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    root: str | Path | None = None,
    download: bool = True,
    image_size: int | None = None,
    augment: bool = False,
) -> ImageData:
    """Load a dataset profile by name (see the module docstring)."""
    if name == "digits":
        return load_digits_split(split, image_size=image_size or 16)
    if name in ("cifar10", "cifar100"):
        if root is None:
            raise DataUnavailableError("data_root", f"{name} needs a data root folder to read or download into")
        return _cifar(name, split, Path(root), download, augment)
    if name.startswith("imagefolder:"):
        return _image_folder(Path(name.split(":", 1)[1]), image_size, augment)
    if Path(name).is_dir():
        return _image_folder(Path(name), image_size, augment)
    raise DataUnavailableError(
        "dataset", f"unknown dataset {name!r}; use digits, cifar10, cifar100, imagefolder:<path> or a folder path"
    )


def digits_anchor_words(holdout: tuple[int, ...] = DIGITS_HOLDOUT) -> list[str]:
    """The prompt words of the digits profile's ID classes, in class order."""
    return [DIGIT_WORDS[d] for d in range(10) if d not in holdout]


def random_anchors(n_classes: int, dim: int, *, norm: float = 0.38, seed: int = 0) -> np.ndarray:
    """Random directions with SD-like token-embedding norms (~0.38); a stand-in when no text encoder is at hand."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_classes, dim)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True) * norm
