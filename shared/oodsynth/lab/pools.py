"""Outliers for the lab's rows: decoded pools (sampled, decoded, re-encoded, cached)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..decoding.verification import Selection, Verification, images_to_tensor, verify_images
from .assets import LabAssets
from .settings import LabSettings

_DECODERS: dict[str, object] = {}
# Images per pipeline call: a pool decodes in a few large batches instead of many of the worker's 64 (the small
# decoder's per-call overhead dominated at 64); 1,024 keeps the text states and activations near 1 GB.
POOL_BATCH = 1024


def _decoder(path: Path):
    """One loaded decoder per folder per process (loading a pipeline costs seconds)."""
    from ..decoding.pipeline import OutlierDecoder

    key = str(Path(path).resolve())
    if key not in _DECODERS:
        _DECODERS[key] = OutlierDecoder(path, device="cpu", n_slots=POOL_BATCH)
    return _DECODERS[key]


@dataclass
class DecodedPool:
    """Decoded outliers of one sampler and seed: images (uint8, N x 3 x S x S at the encoder size) and checks;
    the seconds are CPU seconds (one torch thread: what an idle core takes, whatever else the machine runs)."""

    images: torch.Tensor
    class_index: np.ndarray
    verification: Verification
    sample_seconds: float
    decode_seconds: float

    def choose(self, n_per_class: int, selection: Selection | float | None) -> np.ndarray:
        """Indices of the first ``n_per_class`` images per class (that pass ``selection``, or a bare ID-percentile
        threshold, when one is given)."""
        ok = np.ones(len(self.class_index), bool) if selection is None else self.verification.passes(selection)
        keep = [np.flatnonzero((self.class_index == c) & ok)[:n_per_class] for c in np.unique(self.class_index)]
        return np.sort(np.concatenate(keep))


def pool_path(cache: Path, name: str, assets: LabAssets, settings: LabSettings, n_pool: int, params=None) -> Path:
    """Where a decoded pool is cached: keyed by the split (holdout and data hash), the decoder, the decode
    settings, the pool size, the fit and the sampler's parameters (``params``)."""
    if assets.decoder_dir is None:
        raise ValueError("decoder: these assets have no decoder folder")
    tag = hashlib.sha256(
        json.dumps(
            [str(assets.decoder_dir), assets.decode, settings.decode, n_pool, settings.density, params], sort_keys=True
        ).encode()
    ).hexdigest()[:8]
    return cache / assets.split.key / f"decoded-{name}-{tag}.pt"


VERIFICATION_ARRAYS = ("id_percentile", "id_class", "max_softmax", "margin")


def _cached_pool(path: Path, assets: LabAssets) -> DecodedPool | None:
    """The pool cached at ``path``, if any. A pool cached before margins were recorded gets them once, from its
    stored images re-encoded (decoding costs minutes, re-encoding a second), and is saved again with them."""
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)
    if "margin" not in state:
        images = state["images"].float() / 255
        state["margin"] = torch.from_numpy(verify_images(assets.encoder, assets.fit, images).margin)
        _save(state, path)
    return DecodedPool(
        state["images"],
        state["class_index"].numpy(),
        Verification(*(state[k].numpy() for k in VERIFICATION_ARRAYS)),
        float(state["sample_seconds"]),
        float(state["decode_seconds"]),
    )


def _save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: two benchmark processes may share the cache


def _decode_verified(
    assets: LabAssets,
    vectors: np.ndarray,
    class_index: np.ndarray,
    seed: int,
    settings: LabSettings,
    path: Path,
    sample_seconds: float = 0.0,
    init_images: torch.Tensor | None = None,
) -> DecodedPool:
    """Decode ``vectors`` (one image each, seeded per image; SDEdit from ``init_images`` at the settings'
    ``init_strength`` when given), re-encode them, cache the pool at ``path``."""
    t1 = time.process_time()
    seeds = [seed * 1_000_003 + i for i in range(len(vectors))]
    size = assets.encoder.config.image_size
    decode = {**{"steps": 20, "guidance_scale": 3.0}, **assets.decode, **settings.decode}
    if init_images is not None:
        decode.update(init_images=init_images, strength=settings.init_strength)
    assert assets.decoder_dir is not None  # pools are decoded by the split's decoder
    images = _decoder(assets.decoder_dir).decode(vectors, seeds, **{"output_size": size, **decode})
    t2 = time.process_time()
    x = images_to_tensor(images, size)
    verification = verify_images(assets.encoder, assets.fit, x)
    pool = DecodedPool(
        (x * 255).round().to(torch.uint8), np.asarray(class_index), verification, sample_seconds, t2 - t1
    )
    arrays = {k: torch.from_numpy(getattr(verification, k)) for k in VERIFICATION_ARRAYS}
    state = {"images": pool.images, "class_index": torch.from_numpy(pool.class_index), **arrays}
    _save({**state, "sample_seconds": pool.sample_seconds, "decode_seconds": pool.decode_seconds}, path)
    return pool


def decoded_pool(assets: LabAssets, sampler: str, seed: int, settings: LabSettings, cache: Path) -> DecodedPool:
    """Sample ``oversample * n_per_class`` vectors per class, decode, re-encode; cached per (sampler, seed)."""
    n_classes, _ = assets.fit._check_fitted()
    n_pool = int(np.ceil(settings.oversample * settings.per_class(len(assets.bank.labels), n_classes)))
    init = settings.init_strength
    name = f"{sampler}-s{seed}" + (f"-init{init:g}" if init else "")
    path = pool_path(cache, name, assets, settings, n_pool, settings.sampler_key(sampler))
    if (pool := _cached_pool(path, assets)) is not None:
        return pool
    t0 = time.process_time()
    result = settings.sampler(sampler).sample(assets.fit, n_pool, seed=seed, bank=assets.bank)
    starts = source_images(assets, result.class_index, seed) if init else None
    return _decode_verified(
        assets, result.vectors, result.class_index, seed, settings, path, time.process_time() - t0, starts
    )


_TRAIN_IMAGES: dict[str, tuple[torch.Tensor, np.ndarray]] = {}


def source_images(assets: LabAssets, class_index: np.ndarray, seed: int) -> torch.Tensor:
    """For each vector, a real ID training image of its source class (drawn with ``seed``), float in [0, 1] at
    the encoder's size: where SDEdit starts. The split's training images are read once per process."""
    from ..data import image_tensors

    key = assets.split.key
    if key not in _TRAIN_IMAGES:
        images, labels = image_tensors(assets.split.load("train", assets.encoder.config.image_size))
        _TRAIN_IMAGES[key] = (images, labels.numpy())
    x, y = _TRAIN_IMAGES[key]
    rng = np.random.default_rng([seed, 11])
    picks = [int(rng.choice(np.flatnonzero(y == c))) for c in np.asarray(class_index)]
    return x[picks]


def decoded_inlier_pool(assets: LabAssets, seed: int, settings: LabSettings, cache: Path) -> DecodedPool:
    """ID training features (random, ``oversample * decoded_inliers`` per ID image and class), decoded and
    re-encoded: the decoder's reconstructions of real ID images. Cached per seed."""
    labels = assets.bank.labels
    n_classes, _ = assets.fit._check_fitted()
    n_pool = int(np.ceil(settings.oversample * settings.per_class(len(labels), n_classes, settings.decoded_inliers)))
    path = pool_path(cache, f"inliers-s{seed}", assets, settings, n_pool)
    if (pool := _cached_pool(path, assets)) is not None:
        return pool
    rng = np.random.default_rng([seed, 7])
    idx = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), n_pool, replace=n_pool > (labels == c).sum())
            for c in range(n_classes)
        ]
    )
    vectors = assets.bank.features[idx] * np.linalg.norm(assets.anchors[labels[idx]], axis=1, keepdims=True)
    return _decode_verified(assets, vectors.astype(np.float32), labels[idx], seed + 500_000, settings, path)


def decoded_test_pool(assets: LabAssets, images: torch.Tensor, labels: np.ndarray, settings: LabSettings, cache: Path):
    """Real ID test images (float, at the encoder's size) encoded and decoded back: the decoder's reconstructions
    of ID content that no detector trains on. Cached per split, decoder and decode settings (no seed: every
    cell of a split scores the same images)."""
    path = pool_path(cache, f"test-reconstructions-n{len(labels)}", assets, settings, len(labels))
    if (pool := _cached_pool(path, assets)) is not None:
        return pool
    with torch.no_grad():
        z = torch.nn.functional.normalize(assets.encoder.model.embed(images), dim=1).numpy()
    vectors = z * np.linalg.norm(assets.anchors[labels], axis=1, keepdims=True)
    return _decode_verified(assets, vectors.astype(np.float32), labels, 900_000, settings, path)
