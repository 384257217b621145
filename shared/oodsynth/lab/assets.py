"""The generation side of a split (encoder, class-density fit, decoder): trained once, cached, shared by cells."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bank import FeatureBank
from ..data import ProfileSplit
from ..densities import DENSITY_KINDS, ClassDensities
from ..encoding.features import build_bank
from ..encoding.training import EncoderCheckpoint, EncoderTrainConfig, load_encoder, train_encoder


@dataclass
class LabAssets:
    """What a split's outliers are made with: trained once, cached, shared by every cell of the split."""

    split: ProfileSplit
    encoder: EncoderCheckpoint
    encoder_path: Path
    fit: ClassDensities
    bank: FeatureBank  # of the ID training features
    decoder_dir: Path | None = None
    decode: dict = field(default_factory=dict)  # decode settings that suit this decoder

    @property
    def profile(self) -> str:
        return self.split.profile

    @property
    def anchors(self) -> np.ndarray:
        return self.encoder.anchors

    @property
    def tag(self) -> str:
        """Names these assets in cell cache files: the decoder folder (its name holds its settings hash)."""
        return self.decoder_dir.name if self.decoder_dir is not None else self.encoder_path.parent.name


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def fit_path(cache: Path, split: ProfileSplit, density: str, encoder_stamp: str) -> Path:
    """Where a class-density fit is cached: keyed by the split (holdout and data hash), the density kind and the
    encoder's bytes."""
    return cache / f"fit-{split.key}-{density}-{encoder_stamp}.bin"


def fit_assets(
    split: ProfileSplit,
    encoder_path: Path,
    cache: Path,
    density: str,
    *,
    decoder_dir: Path | None = None,
    decode: dict | None = None,
) -> LabAssets:
    """Load an encoder, fit (or reload the cached fit of) its ID training features, and bundle the assets."""
    if density not in DENSITY_KINDS:
        raise ValueError(f"density: unknown kind {density!r}; choose one of {', '.join(DENSITY_KINDS)}")
    encoder = load_encoder(encoder_path, device="cpu")
    train = split.load("train", encoder.config.image_size)
    bank = build_bank(encoder, train, progress=False)  # rebuilt per process from the split's own images
    file = Path(encoder_path) if Path(encoder_path).is_file() else Path(encoder_path) / "encoder.pt"
    fit_file = fit_path(cache, split, density, hashlib.sha256(file.read_bytes()).hexdigest()[:10])
    if fit_file.is_file():
        fit = ClassDensities.from_bytes(fit_file.read_bytes())
    else:
        fit = ClassDensities(kind=density).fit(bank)
        cache.mkdir(parents=True, exist_ok=True)
        _atomic_write(fit_file, fit.to_bytes())
    return LabAssets(split, encoder, Path(encoder_path), fit, bank, decoder_dir, dict(decode or {}))


def train_local_assets(
    split: ProfileSplit | str,
    folder: Path,
    decoder_dir: Path,
    *,
    anchors: np.ndarray | None = None,
    density: str = "gaussian_full",
    epochs: int = 3,
    width: int = 8,
    image_size: int = 16,
    decode: dict | None = None,
) -> LabAssets:
    """Small stand-in assets for tests: a quickly trained encoder and any decoder folder.

    ``anchors`` default to ``decoder_dir``'s token rows of the class words; the decoder writes outlier vectors
    into placeholder tokens, so any anchors of its hidden size work.
    """
    from ..encoding.anchors import extract_anchors

    split = split if isinstance(split, ProfileSplit) else ProfileSplit.default(split)
    folder.mkdir(parents=True, exist_ok=True)
    train = split.load("train", image_size)
    if not (folder / "encoder.pt").is_file():
        if anchors is None:
            anchors = extract_anchors(decoder_dir, train.class_names)
        config = EncoderTrainConfig(
            arch="resnet10",
            width=width,
            epochs=epochs,
            batch_size=64,
            lr=0.05,
            image_size=image_size,
            mean=train.mean,
            std=train.std,
            dataset=split.profile,
        )
        train_encoder(config, train, anchors, folder, device="cpu", progress=False)
    return fit_assets(split, folder, folder, density, decoder_dir=decoder_dir, decode=decode)


def profile_assets(
    split: ProfileSplit | str, cache: Path, density: str = "gaussian_full", decoder_dir: Path | None = None
) -> LabAssets:
    """The project's trained assets for a split: ``decoder_dir`` (a ``train-decoder`` folder, which must have
    been trained on this split) when given, else ``ensure_profile_assets`` (trained on first use, then cached
    under ``OODSYNTH_HOME``); with the decode settings its training recommends and a fit of its encoder's
    features, cached in ``cache``."""
    from ..offline_decoder.assets import ensure_profile_assets, load_profile_assets

    split = split if isinstance(split, ProfileSplit) else ProfileSplit.default(split)
    found = (
        load_profile_assets(decoder_dir)
        if decoder_dir
        else ensure_profile_assets(split.profile, holdout=split.holdout, progress=False, echo=print)
    )
    trained_on = found.config.split()
    if (trained_on.profile, trained_on.holdout) != (split.profile, split.holdout):
        raise ValueError(f"decoder: {found.decoder_dir} was trained on the split {trained_on.label}, not {split.label}")
    return fit_assets(
        split,
        found.encoder_checkpoint,
        cache / split.profile,
        density,
        decoder_dir=found.decoder_dir,
        decode=found.decode_settings(),
    )
