"""Verified outliers: does a decoded image still look like an outlier once re-encoded?

A sampler picks a vector in a low-density region, but the decoder may draw an
ordinary class image from it anyway (measured on digits: decoded inverse_sgld
outliers re-encode at the 17th ID percentile). So each decoded image is
re-encoded with the text-aligned encoder and checked against the fit:

- ``id_percentile``: the highest ID percentile of its feature over all classes
  (an image that looks like a typical image of *any* ID class is no outlier),
  and ``id_class``, the class where that happens;
- ``max_softmax``: the anchor classifier's confidence, max_j softmax(cos(z, T(y_j)) / t).

An outlier is *verified* when its ``id_percentile`` is at most a threshold
(``train-ood --max-id-percentile``). The fields go into the image's manifest
row (``VERIFICATION_KEYS``), so the filter needs no model at training time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..densities import ClassDensities
from ..encoding.training import EncoderCheckpoint
from ..errors import InputError

VERIFICATION_KEYS = ("id_percentile", "id_class", "max_softmax")
# the manifest's diagnostics already hold the *vector's* id_percentile; the image's carry this prefix
MANIFEST_PREFIX = "verified_"
# train-ood's default threshold when every stored image is verified: of 10, 5 and 2, the only one under which no
# sampler's decoded outliers made near-OOD FPR95 worse than CE only (bench/results/small_setting/: ood_gain.md,
# ood_gain_threshold5.md, ood_gain_threshold2.md; docs/results.md)
DEFAULT_MAX_ID_PERCENTILE = 10.0


@dataclass
class Verification:
    """Per image: ``id_percentile`` (max over classes, 0..100), ``id_class``, ``max_softmax``."""

    id_percentile: np.ndarray
    id_class: np.ndarray
    max_softmax: np.ndarray

    def __len__(self) -> int:
        return len(self.id_percentile)

    def passes(self, max_id_percentile: float) -> np.ndarray:
        """Boolean mask of the images that are verified outliers at this threshold."""
        if not 0.0 <= max_id_percentile <= 100.0:
            raise ValueError(f"max_id_percentile: must lie in [0, 100], got {max_id_percentile}")
        return self.id_percentile <= max_id_percentile

    def manifest_fields(self, i: int) -> dict[str, float]:
        """Image ``i``'s fields for its manifest row (``verified_id_percentile`` ...)."""
        return {f"{MANIFEST_PREFIX}{k}": float(getattr(self, k)[i]) for k in VERIFICATION_KEYS}

    def summary(self) -> dict[str, float]:
        return {
            "n": len(self),
            "median_id_percentile": float(np.median(self.id_percentile)),
            "median_max_softmax": float(np.median(self.max_softmax)),
        }


def images_to_tensor(images: Sequence[Image.Image] | torch.Tensor, image_size: int) -> torch.Tensor:
    """PIL images (or a float tensor (N, 3, H, W) in [0, 1]) -> float (N, 3, S, S) in [0, 1] at ``image_size``."""
    if isinstance(images, torch.Tensor):
        x = images.float()
    else:
        from torchvision.transforms.functional import pil_to_tensor

        x = torch.stack([pil_to_tensor(im.convert("RGB")) for im in images]).float() / 255
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0, 1)


@torch.no_grad()
def verify_images(
    encoder: EncoderCheckpoint,
    fit: ClassDensities,
    images: Sequence[Image.Image] | torch.Tensor,
    *,
    batch_size: int = 256,
) -> Verification:
    """Re-encode ``images`` with ``encoder`` and place each under ``fit`` (see the module docstring)."""
    if fit.dim != encoder.model.dim or fit.n_classes != len(encoder.class_names):
        raise ValueError(
            f"fit: {fit.n_classes} classes of dim {fit.dim} do not match the encoder's "
            f"{len(encoder.class_names)} classes of dim {encoder.model.dim}"
        )
    model = encoder.model.eval()
    device = next(model.parameters()).device
    x = images_to_tensor(images, encoder.config.image_size)
    z = torch.cat([model.embed(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
    feats = z.numpy().astype(np.float64)
    pct = np.stack(
        [
            fit.percentile(fit.score_samples(feats, np.full(len(feats), c)), np.full(len(feats), c))
            for c in range(fit.n_classes)
        ]
    )
    anchors = F.normalize(torch.as_tensor(encoder.anchors, dtype=torch.float32), dim=1)
    probs = torch.softmax(z @ anchors.T / encoder.config.temperature, dim=1)
    return Verification(
        id_percentile=pct.max(axis=0),
        id_class=pct.argmax(axis=0).astype(np.int64),
        max_softmax=probs.max(dim=1).values.numpy().astype(np.float64),
    )


class DecodeVerifier:
    """Verification inside the decode job: the worker's encoder loaded once per process, fits from the registry.

    The worker verifies when it has an encoder (``OODSYNTH_ENCODER_CHECKPOINT``) and the job names the fit its
    vectors came from (``DecodeJob.verify_fit``); otherwise images are stored unverified, and
    ``train-ood --max-id-percentile`` refuses them by name.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._encoder: EncoderCheckpoint | None = None

    def _load(self, path, device) -> EncoderCheckpoint:
        from ..encoding.training import load_encoder

        key = (str(path), str(device))
        if self._key != key:
            self._encoder, self._key = load_encoder(path, device=device), key
        return self._encoder

    def fields(self, settings, fit_name: str | None, images: Sequence[Image.Image]) -> list[dict] | None:
        """Per image, its manifest fields (``verified_*``); None when this worker or job does not verify."""
        if not fit_name or settings.encoder_checkpoint is None:
            return None
        from ..device import default_device
        from ..state.fits import FitRegistry
        from ..state.redis_conn import get_redis

        encoder = self._load(settings.encoder_checkpoint, settings.device or default_device())
        fit, _bank = FitRegistry(get_redis()).get(fit_name, field="verify_fit")
        try:
            v = verify_images(encoder, fit, images)
        except ValueError as exc:  # this worker's encoder does not match the fit: no image of the job can pass
            raise InputError("verify_fit", f"{exc} (worker encoder {settings.encoder_checkpoint})") from None
        return [v.manifest_fields(i) for i in range(len(v))]


VERIFIER = DecodeVerifier()  # the worker process's one encoder
