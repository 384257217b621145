"""Verified outliers: does a decoded image still look like an outlier once re-encoded?

A sampler picks a vector in a low-density region, but the decoder may draw an
ordinary class image from it anyway (measured on digits: decoded inverse_sgld
outliers re-encode at the 17th ID percentile). So each decoded image is
re-encoded with the text-aligned encoder and checked against the fit:

- ``id_percentile``: the highest ID percentile of its feature over all classes
  (an image that looks like a typical image of *any* ID class is no outlier),
  and ``id_class``, the class where that happens;
- ``max_softmax``: the anchor classifier's confidence, max_j softmax(cos(z, T(y_j)) / t);
- ``margin``: the anchor classifier's top-1 minus top-2 cosine, cos(z, T(y_(1))) - cos(z, T(y_(2))), in [0, 2]:
  the samplers' ``margin`` units (``samplers.anchor_classifier``), free of the temperature. Small: the image is
  ambiguous between two ID classes (the boundary outliers of HamOS and BOOD).

An outlier is *verified* when it passes a ``Selection``: its ``id_percentile`` inside a band (at most
``train-ood --max-id-percentile``, at least ``--min-id-percentile``: the lowest are blobs and decoder
artefacts) and, optionally, its ``margin`` at most ``--max-margin``. The fields go into the image's manifest
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

VERIFICATION_KEYS = ("id_percentile", "id_class", "max_softmax", "margin")
# the manifest's diagnostics already hold the *vector's* id_percentile; the image's carry this prefix
MANIFEST_PREFIX = "verified_"
# train-ood's default threshold when every stored image is verified: of 10, 5 and 2, the only one under which no
# sampler's decoded outliers made near-OOD FPR95 worse than CE only (bench/results/small_setting/: ood_gain.md,
# ood_gain_threshold5.md, ood_gain_threshold2.md; docs/results.md)
DEFAULT_MAX_ID_PERCENTILE = 10.0
MAX_MARGIN = 2.0  # the widest top-1 minus top-2 cosine


def _in_range(field: str, value: float, high: float) -> None:
    if not 0.0 <= value <= high:  # NaN fails too
        raise InputError(field, f"must lie in [0, {high:g}], got {value}")


@dataclass(frozen=True)
class Selection:
    """Which verified images to keep: ID percentile in [``min_id_percentile``, ``max_id_percentile``] and, when
    ``max_margin`` is set, top-2 margin at most it. The defaults keep what the single threshold kept: a minimum
    of 0 is no lower bound (so a maximum of 0 stays valid), and no margin filter."""

    min_id_percentile: float = 0.0
    max_id_percentile: float = DEFAULT_MAX_ID_PERCENTILE
    max_margin: float | None = None

    def __post_init__(self) -> None:
        _in_range("max_id_percentile", self.max_id_percentile, 100.0)
        _in_range("min_id_percentile", self.min_id_percentile, 100.0)
        if self.min_id_percentile > 0 and self.min_id_percentile >= self.max_id_percentile:
            raise InputError(
                "min_id_percentile",
                f"must lie below max_id_percentile {self.max_id_percentile:g}, got {self.min_id_percentile:g}",
            )
        if self.max_margin is not None:
            _in_range("max_margin", self.max_margin, MAX_MARGIN)

    @classmethod
    def of(cls, selection: Selection | float) -> Selection:
        """A selection as given, or the band below a bare threshold (today's single ``max_id_percentile``)."""
        return selection if isinstance(selection, Selection) else cls(max_id_percentile=float(selection))

    def passes(self, verification: Verification) -> np.ndarray:
        """Boolean mask of the images this selection keeps; an unknown (NaN) margin fails a margin filter."""
        pct = verification.id_percentile
        keep = (pct >= self.min_id_percentile) & (pct <= self.max_id_percentile)
        if self.max_margin is not None:
            margin = verification.margin
            assert margin is not None  # Verification.__post_init__ fills a missing margin with NaN
            keep &= margin <= self.max_margin
        return keep

    def describe(self) -> str:
        """The selection in words, for notes and errors: ``ID percentile <= 10``, ``... in [2, 10]; margin <= 0.1``."""
        lo, hi = self.min_id_percentile, self.max_id_percentile
        text = f"ID percentile in [{lo:g}, {hi:g}]" if lo > 0 else f"ID percentile <= {hi:g}"
        return text if self.max_margin is None else f"{text}; top-2 margin <= {self.max_margin:g}"


@dataclass
class Verification:
    """Per image: ``id_percentile`` (max over classes, 0..100), ``id_class``, ``max_softmax``, ``margin`` (NaN where
    unknown: images verified before margins were recorded)."""

    id_percentile: np.ndarray
    id_class: np.ndarray
    max_softmax: np.ndarray
    margin: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.margin is None:
            self.margin = np.full(len(self.id_percentile), np.nan)

    def __len__(self) -> int:
        return len(self.id_percentile)

    @classmethod
    def from_manifest(cls, rows: Sequence[dict]) -> Verification:
        """The verification of manifest rows' diagnostics (``verified_*``; each must carry an ID percentile)."""

        def column(key: str) -> np.ndarray:
            return np.array([float(r.get(MANIFEST_PREFIX + key, np.nan)) for r in rows], dtype=np.float64)

        return cls(column("id_percentile"), column("id_class"), column("max_softmax"), column("margin"))

    def passes(self, selection: Selection | float) -> np.ndarray:
        """Boolean mask of the images that are verified outliers under ``selection`` (or a bare threshold)."""
        return Selection.of(selection).passes(self)

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


def _top2_margin(cos: torch.Tensor) -> np.ndarray:
    """Top-1 minus top-2 cosine per row; NaN (unknown, failing a margin filter) with a single class."""
    if cos.shape[1] < 2:
        return np.full(len(cos), np.nan)
    top2 = cos.topk(2, dim=1).values.double()
    return (top2[:, 0] - top2[:, 1]).numpy()


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
    cos = z @ anchors.T
    probs = torch.softmax(cos / encoder.config.temperature, dim=1)
    return Verification(
        id_percentile=pct.max(axis=0),
        id_class=pct.argmax(axis=0).astype(np.int64),
        max_softmax=probs.max(dim=1).values.numpy().astype(np.float64),
        margin=_top2_margin(cos),
    )


class DecodeVerifier:
    """Verification inside the decode job: the worker's encoder loaded once per process, fits from the registry.

    The worker verifies when it has an encoder (``OODSYNTH_ENCODER_CHECKPOINT``) and the job names the fit its
    vectors came from (``DecodeJob.verify_fit``); otherwise images are stored unverified, and
    ``train-ood --max-id-percentile`` refuses them by name. Each image's fields are ``Verification.manifest_fields``
    (``verified_margin`` included).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._encoder: EncoderCheckpoint | None = None

    def _load(self, path, device) -> EncoderCheckpoint:
        from ..encoding.training import load_encoder

        key = (str(path), str(device))
        encoder = self._encoder
        if self._key != key or encoder is None:  # the two are set together: a known key has its encoder
            encoder = self._encoder = load_encoder(path, device=device)
            self._key = key
        return encoder

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
