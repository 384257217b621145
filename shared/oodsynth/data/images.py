"""What every dataset is to the models: an ``ImageData`` (a torch dataset yielding ``(float tensor (3, H, W) in
[0, 1], class index)`` plus its class names, size and pixel statistics), and the error for one that cannot load.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError


class DataUnavailableError(InputError):
    """A dataset cannot be loaded (offline download, missing folder); ``field`` names the option to change."""


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
        assert isinstance(self.dataset, Sized)  # a map-style dataset
        return len(self.dataset)


def image_tensors(data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``data`` as one float image tensor (N, 3, S, S) and its int64 labels (N,)."""
    xs, ys = zip(*(data.dataset[i] for i in range(len(data))))
    return torch.stack(xs).float(), torch.as_tensor(np.asarray(ys, dtype=np.int64))
