"""Image-space mixing outliers: mixup and cutmix of two ID training images of different classes.

The cheapest outliers a user can make without a generator: an image that is
part one class and part another belongs to neither, so it sits between the
classes, where the boundary outliers of the samplers are also meant to be.
Each pair joins images of two different classes (same-class mixes are ID
images); the share of the first image is drawn from ``share`` (default 0.3 to
0.7: both classes are plainly present; a mix that is mostly one class is that
class's image, and calling it an outlier would fight the CE loss). The images
are returned as a float tensor in the input's range, ready for ``train_ood``'s
outlier dataset; ``first``, ``second`` and ``share`` record what each is.
``MixingDataset`` makes the very same mixes on access from an ID dataset
(``training.outlier_mix`` joins them to stored outliers for ``train-ood``).
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import InputError

MIXING_KINDS = ("mixup", "cutmix")
DEFAULT_SHARE = (0.3, 0.7)


@dataclass
class MixedOutliers:
    images: torch.Tensor  # float (n, C, H, W)
    first: torch.Tensor  # int64 (n,): class of the first image
    second: torch.Tensor  # int64 (n,): class of the second image, never the first's
    share: torch.Tensor  # float (n,): the first image's share (mixup: its weight; cutmix: its visible area)

    def __len__(self) -> int:
        return len(self.images)


def draw_pairs(labels: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (a, b) of ``n`` image pairs whose labels differ: a uniform image, then a uniform image of a uniform
    other class."""
    labels = torch.as_tensor(labels).long()
    classes, counts = labels.unique(return_counts=True)
    if len(classes) < 2:
        raise InputError("labels", f"mixing needs images of at least two classes, got {len(classes)}")
    if n < 1:
        raise InputError("n", f"must be positive, got {n}")
    order = labels.argsort(stable=True)  # images grouped by class, in class order
    starts = torch.cumsum(counts, 0) - counts
    a = torch.randint(len(labels), (n,), generator=generator)
    pos_a = torch.searchsorted(classes, labels[a])
    pos_b = (pos_a + torch.randint(1, len(classes), (n,), generator=generator)) % len(classes)  # never pos_a
    within = (torch.rand(n, generator=generator) * counts[pos_b]).long().clamp_max(counts[pos_b] - 1)
    return a, order[starts[pos_b] + within]


def _shares(n: int, share: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    lo, hi = share
    if not 0 < lo <= hi < 1:
        raise InputError("share", f"must satisfy 0 < low <= high < 1, got {share}")
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def mixup(
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    generator: torch.Generator,
    share: tuple[float, float] = DEFAULT_SHARE,
) -> MixedOutliers:
    """``n`` convex combinations lam * x_a + (1 - lam) * x_b of images of two different classes."""
    a, b = draw_pairs(labels, n, generator)
    lam = _shares(n, share, generator)
    w = lam.view(-1, *([1] * (images.dim() - 1))).to(images.dtype)
    return MixedOutliers(w * images[a] + (1 - w) * images[b], labels[a].long(), labels[b].long(), lam)


def cutmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    generator: torch.Generator,
    share: tuple[float, float] = DEFAULT_SHARE,
) -> MixedOutliers:
    """``n`` images x_a with a box of x_b pasted in (a different class): the box covers 1 - lam of the image, its
    sides in the image's aspect, its place uniform; ``share`` reports the area x_a keeps after rounding."""
    a, b = draw_pairs(labels, n, generator)
    lam = _shares(n, share, generator)
    height, width = images.shape[-2:]
    box = _boxes(lam, height, width, generator)
    mixed = torch.where(box.unsqueeze(1), images[b], images[a])
    kept = 1 - box.flatten(1).float().mean(1)
    return MixedOutliers(mixed, labels[a].long(), labels[b].long(), kept)


def _boxes(lam: torch.Tensor, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Cutmix boxes (n, H, W), True inside: each covers 1 - lam of the image, its sides in the image's aspect, its
    place uniform."""
    n = len(lam)
    side = (1 - lam).sqrt()
    box_h = (side * height).round().long().clamp(1, height)
    box_w = (side * width).round().long().clamp(1, width)
    top = (torch.rand(n, generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - box_w + 1)).long()
    rows = torch.arange(height).view(1, -1, 1)
    cols = torch.arange(width).view(1, 1, -1)
    return (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + box_h).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + box_w).view(-1, 1, 1))
    )


def mixing_outliers(
    kind: str, images: torch.Tensor, labels: torch.Tensor, n: int, seed: int, share: tuple[float, float] = DEFAULT_SHARE
) -> MixedOutliers:
    """``n`` mixing outliers of ``kind`` (mixup or cutmix) from ID images, seeded."""
    makers = {"mixup": mixup, "cutmix": cutmix}
    if kind not in makers:
        raise InputError("kind", f"unknown mixing {kind!r}; choose one of {', '.join(MIXING_KINDS)}")
    if len(images) != len(labels):
        raise InputError("labels", f"{len(labels)} labels for {len(images)} images")
    return makers[kind](images, torch.as_tensor(labels), n, torch.Generator().manual_seed(seed), share)


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The int64 labels of an image dataset: its ``targets`` (torchvision), a ``TensorDataset``'s second tensor, or
    one pass over its items."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long()
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets).long()
    assert isinstance(dataset, Sized)  # a map-style dataset
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


class MixingDataset(Dataset):
    """``n`` mixing outliers of an ID dataset, each made when it is read: ``(image, 0)``, like a stored outlier.

    The pairs, shares and cutmix boxes are drawn once from ``seed`` (the same as ``mixing_outliers``); the images
    come from the dataset on access, through its own transform, so a large ID set is never held in memory twice.
    """

    def __init__(
        self,
        kind: str,
        dataset: Dataset,
        n: int,
        seed: int,
        share: tuple[float, float] = DEFAULT_SHARE,
    ):
        if kind not in MIXING_KINDS:
            raise InputError("mixing_kind", f"unknown mixing {kind!r}; choose one of {', '.join(MIXING_KINDS)}")
        self.kind, self.dataset = kind, dataset
        generator = torch.Generator().manual_seed(seed)
        self.first, self.second = draw_pairs(dataset_labels(dataset), n, generator)
        self.share = _shares(n, share, generator)
        height, width = dataset[0][0].shape[-2:]
        self.boxes = _boxes(self.share, height, width, generator) if kind == "cutmix" else None

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x_a = self.dataset[int(self.first[index])][0]
        x_b = self.dataset[int(self.second[index])][0]
        if self.boxes is None:
            return self.share[index] * x_a + (1 - self.share[index]) * x_b, 0
        return torch.where(self.boxes[index], x_b, x_a), 0
