"""One loader for every dataset name the CLI and services accept.

- ``digits``, ``animals``: the offline profiles (``offline.py``), their default split.
- ``cifar10`` / ``cifar100``: torchvision, downloaded into ``root`` when the
  internet is reachable; offline, a ``DataUnavailableError`` says so.
- ``imagefolder:<path>`` (or any existing folder): torchvision ``ImageFolder``.
"""

from __future__ import annotations

from pathlib import Path

from .images import DataUnavailableError, ImageData
from .offline import OFFLINE_PROFILES, load_profile_split

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


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
    steps = (
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
        if augment
        else [transforms.Resize(size), transforms.CenterCrop(size)]
    )
    transform = transforms.Compose([transforms.Lambda(lambda im: im.convert("RGB")), *steps, transforms.ToTensor()])
    try:
        ds = datasets.ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataUnavailableError(
            "dataset", f"{path} is not an ImageFolder (one sub-folder of images per class): {exc}"
        ) from None
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
    if name in OFFLINE_PROFILES:
        return load_profile_split(name, split, image_size=image_size)
    if name in ("cifar10", "cifar100"):
        if root is None:
            raise DataUnavailableError("data_root", f"{name} needs a data root folder to read or download into")
        return _cifar(name, split, Path(root), download, augment)
    if name.startswith("imagefolder:"):
        return _image_folder(Path(name.split(":", 1)[1]), image_size, augment)
    if Path(name).is_dir():
        return _image_folder(Path(name), image_size, augment)
    raise DataUnavailableError(
        "dataset",
        f"unknown dataset {name!r}; use {', '.join(OFFLINE_PROFILES)}, cifar10, cifar100, "
        f"imagefolder:<path> or a folder path",
    )
