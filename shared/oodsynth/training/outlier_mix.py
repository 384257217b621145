"""The outlier mix: stored outlier images plus a share of smooth noise and a share of ID mixes.

The OOD lab's decoded recipe replaces part of its decoded outliers with smooth
noise (blobs: cheap far-OOD coverage) and part with cutmix of two ID images of
different classes (cheap near-boundary coverage), chosen on its dev splits
(bench/results/ood_protocol/choose_defaults.md). ``with_outlier_mix`` gives
``train-ood`` the same mix around any outlier set, held or streamed; the lab
draws its noise with ``smooth_noise`` and its mixes with ``training.mixing``.
``cheap_recipe_outliers`` makes the lab's generator-free rows (``noise``, ``cutmix``, ``mixup``, ``noise+cutmix``)
for ``train-ood --recipe``: the same outliers without any stored set.
"""

from __future__ import annotations

from collections.abc import Sized

import torch
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, Dataset, IterableDataset

from ..errors import InputError
from .mixing import MixingDataset

NOISE_GRID = 4  # the noise is uniform on a 4x4 grid, upsampled: blobs, unlike per-pixel noise


def check_shares(noise_share: float, mixing_share: float) -> None:
    """Noise and mixes are shares of all the outliers: the stored (or decoded) ones keep the rest. ``ValueError``
    otherwise; the lab's settings, ``OODTrainConfig`` and ``with_outlier_mix`` all check with this."""
    if noise_share < 0 or mixing_share < 0 or noise_share + mixing_share >= 1:
        raise ValueError(
            "noise_share + mixing_share must be >= 0 and stay below 1: the stored (or decoded) outliers keep the rest"
        )


def _noise_grid(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, NOISE_GRID, NOISE_GRID, generator=torch.Generator().manual_seed(seed))


def _upsample(grid: torch.Tensor, image_size: int) -> torch.Tensor:
    x = F.interpolate(grid, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


def smooth_noise(n: int, image_size: int, seed: int) -> torch.Tensor:
    """``n`` grey smooth-noise images (n, 3, S, S) in [0, 1]: uniform 4x4 noise upsampled to ``image_size``.

    Deliberately unlike the far-OOD ``noise`` set of the lab (per-pixel uniform noise), so that a detector
    trained on it is not trained on a test distribution.
    """
    return _upsample(_noise_grid(n, seed), image_size)


class SmoothNoiseDataset(Dataset):
    """``smooth_noise(n, image_size, seed)`` read one ``(image, 0)`` at a time: the grids are drawn at once (16
    numbers an image), each image upsampled when read."""

    def __init__(self, n: int, image_size: int, seed: int):
        self.grids, self.image_size = _noise_grid(n, seed), image_size

    def __len__(self) -> int:
        return len(self.grids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _upsample(self.grids[index : index + 1], self.image_size)[0], 0


class _StreamWithExtras(IterableDataset):
    """A stream of outlier images with an extra (noise or a mix) yielded whenever the extras fall behind their
    share of all yielded."""

    def __init__(self, stream: IterableDataset, extras: list[tuple[Dataset, float]], stored_share: float):
        self.stream, self.extras, self.stored_share = stream, extras, stored_share

    def __iter__(self):
        owed = [0.0] * len(self.extras)
        drawn = [0] * len(self.extras)
        for item in self.stream:
            yield item
            for j, (extra, share) in enumerate(self.extras):
                owed[j] += share / self.stored_share
                while owed[j] >= 1:
                    yield extra[drawn[j] % len(extra)]
                    owed[j], drawn[j] = owed[j] - 1, drawn[j] + 1


def _held_length(outliers: Dataset) -> int:
    assert isinstance(outliers, Sized)  # a held (map-style) set
    return len(outliers)


def with_outlier_mix(
    outliers: Dataset,
    id_dataset: Dataset,
    *,
    noise_share: float = 0.0,
    mixing_share: float = 0.0,
    mixing_kind: str = "cutmix",
    image_size: int,
    seed: int,
) -> Dataset:
    """``outliers`` plus smooth noise and ``mixing_kind`` mixes of ``id_dataset``'s images, as many as make
    ``noise_share`` and ``mixing_share`` of them all: concatenated to a held set; interleaved into a stream (whose
    length is unknown), drawing in turn from one ID set's worth of each."""
    try:
        check_shares(noise_share, mixing_share)
    except ValueError as exc:
        raise InputError("mixing_share", str(exc)) from None
    if not noise_share and not mixing_share:
        return outliers
    stored = 1 - noise_share - mixing_share
    streamed = isinstance(outliers, IterableDataset)
    assert isinstance(id_dataset, Sized)  # map-style, as the held outliers are
    n_total = len(id_dataset) if streamed else _held_length(outliers) / stored
    extras: list[tuple[Dataset, float]] = []
    if noise_share and (n := len(id_dataset) if streamed else round(n_total * noise_share)):
        extras.append((SmoothNoiseDataset(n, image_size, seed), noise_share))
    if mixing_share and (n := len(id_dataset) if streamed else round(n_total * mixing_share)):
        extras.append((MixingDataset(mixing_kind, id_dataset, n, seed + 1), mixing_share))
    if isinstance(outliers, IterableDataset):
        return _StreamWithExtras(outliers, extras, stored)
    return ConcatDataset([outliers, *(extra for extra, _ in extras)]) if extras else outliers


# The lab's generator-free rows as train-ood recipes: (share of smooth noise, the mixing of the rest or None).
CHEAP_RECIPES: dict[str, tuple[float, str | None]] = {
    "noise": (1.0, None),
    "cutmix": (0.0, "cutmix"),
    "mixup": (0.0, "mixup"),
    "noise+cutmix": (0.5, "cutmix"),
}

# What train-ood trains when it is given no outliers: the OOD lab's default recipe when that is one of the above
# (chosen on the dev splits: bench/results/decoded_outliers/choose_recipe.md), None when it needs stored outliers.
RECOMMENDED_RECIPE: str | None = "mixup"


def cheap_recipe_outliers(recipe: str, id_dataset: Dataset, n: int, *, image_size: int, seed: int) -> Dataset:
    """``n`` outliers made without a generator, as the lab's row of that name makes them (``lab.peers``): the
    noise share's count rounded down is smooth noise, the rest mixes of two ID images of different classes."""
    if recipe not in CHEAP_RECIPES:
        raise InputError("recipe", f"unknown recipe {recipe!r}; choose one of {', '.join(CHEAP_RECIPES)}")
    if n < 1:
        raise InputError("outlier_ratio", f"gives {n} outliers for {len(id_dataset)} ID images: raise it")  # type: ignore[arg-type]  # map-style
    noise_share, mixing = CHEAP_RECIPES[recipe]
    n_noise = int(n * noise_share)
    parts: list[Dataset] = [SmoothNoiseDataset(n_noise, image_size, seed)] if n_noise else []
    if mixing is not None and n - n_noise:
        parts.append(MixingDataset(mixing, id_dataset, n - n_noise, seed + 1))
    return ConcatDataset(parts)
