"""Encoder checkpoint + images -> unit-norm features, a FeatureBank, nearest-anchor classes.

The bank is what the densities are fitted on, so its features are z = h/||h||
(points on the unit sphere) and its anchors are the raw T(y) the encoder was
trained against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..bank import FeatureBank
from ..data import ImageData
from .encoder import TextAlignedEncoder
from .training import EncoderCheckpoint, load_encoder


def nearest_anchor(features: np.ndarray, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the most cosine-similar anchor per row, and that cosine."""
    f = np.asarray(features, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    a = np.asarray(anchors, dtype=np.float32)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    cos = f @ a.T
    idx = cos.argmax(axis=1)
    return idx.astype(np.int64), cos[np.arange(len(idx)), idx]


@torch.no_grad()
def extract_features(
    model: TextAlignedEncoder,
    data: ImageData,
    *,
    batch_size: int = 256,
    progress: bool | Callable[[int, int], None] = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm features (N, D) float32 and labels (N,) int64 for every image of ``data``."""
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(data.dataset, batch_size=batch_size, shuffle=False)
    feats, labels = [], []
    done = 0
    for x, y in tqdm(loader, desc="features", unit="batch", disable=progress is not True, leave=False):
        feats.append(model.embed(x.to(device)).float().cpu().numpy())
        labels.append(np.asarray(y, dtype=np.int64))
        done += len(y)
        if callable(progress):
            progress(done, len(data))
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels)


def build_bank(
    checkpoint: EncoderCheckpoint | str | Path,
    data: ImageData,
    *,
    batch_size: int = 256,
    progress: bool | Callable[[int, int], None] = True,
) -> FeatureBank:
    """Encode ``data`` with the checkpoint's encoder into a validated FeatureBank."""
    ckpt = checkpoint if isinstance(checkpoint, EncoderCheckpoint) else load_encoder(checkpoint)
    if list(data.class_names) != list(ckpt.class_names):
        raise ValueError(
            f"dataset: its classes {data.class_names[:5]}... differ from the checkpoint's "
            f"{ckpt.class_names[:5]}... (a bank needs the encoder's own classes)"
        )
    features, labels = extract_features(ckpt.model, data, batch_size=batch_size, progress=progress)
    return FeatureBank.from_arrays(features, labels, ckpt.anchors, ckpt.class_names)


class ImageEmbedder:
    """A checkpoint loaded once for serving: PIL images -> features and nearest-anchor classes."""

    def __init__(self, checkpoint: str | Path, device: str | None = None):
        self.checkpoint = load_encoder(checkpoint, device=device)
        self.image_size = self.checkpoint.config.image_size

    @property
    def class_names(self) -> list[str]:
        return self.checkpoint.class_names

    def _to_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor, resize

        size = [self.image_size, self.image_size]
        return (
            torch.stack([resize(pil_to_tensor(im.convert("RGB")), size, antialias=True) for im in images]).float() / 255
        )

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """``features`` (M, D) unit-norm, ``class_index`` (M,), ``cosine`` to that class's anchor (M,)."""
        model = self.checkpoint.model
        x = self._to_tensor(images).to(next(model.parameters()).device)
        features = model.embed(x).float().cpu().numpy()
        idx, cos = nearest_anchor(features, self.checkpoint.anchors)
        return {"features": features, "class_index": idx, "cosine": cos}
