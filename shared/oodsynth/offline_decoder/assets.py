"""A profile's trained decoder, encoder and anchors, built once and cached under ``OODSYNTH_HOME``.

``ensure_profile_assets("animals")`` is what the lab, the demo and the CLI
call: it returns the cached folder when one was trained with the same
settings, else trains it (a few CPU minutes) and caches it. The cache key is
the profile, the split's key (held-out classes and a hash of its data) and a
hash of every training setting, so changing the holdout, the data or a
setting never returns a stale decoder. Concurrent callers (two test workers, the demo
and a benchmark) are serialised with a file lock and the finished folder
appears by an atomic rename, so nobody reads a half-written one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .training import (
    ANCHORS_NAME,
    ENCODER_DIR,
    METADATA_NAME,
    DecoderTrainConfig,
    profile_config,
    train_decoder,
)

CACHE_DIR = "decoders"


@dataclass
class ProfileAssets:
    """Everything the lab and the demo need from one trained decoder folder."""

    decoder_dir: Path  # a StableDiffusionPipeline folder (OODSYNTH_MODEL / OutlierDecoder accept it)
    encoder_checkpoint: Path  # the text-aligned encoder (encoder_training.load_encoder)
    anchors: np.ndarray  # (C, 768) float32: the class words' token rows of the decoder's text encoder
    class_names: list[str]
    config: DecoderTrainConfig
    record: dict  # training figures (losses, accuracies, seconds)

    @property
    def image_size(self) -> int:
        """Decode height = width in pixels, and the encoder's input size."""
        return self.config.image_size

    def decode_settings(self) -> dict:
        """The recommended ``decode`` settings for ``/generate`` and ``OutlierDecoder.decode``."""
        return {
            "steps": self.config.decode_steps,
            "guidance_scale": self.config.guidance_scale,
            "height": self.image_size,
            "width": self.image_size,
            "scheduler": "ddim",
        }


def load_profile_assets(decoder_dir: str | Path) -> ProfileAssets:
    """Read a folder written by ``train_decoder`` (a cache entry or a ``train-decoder`` output)."""
    decoder_dir = Path(decoder_dir)
    meta_path = decoder_dir / METADATA_NAME
    if not meta_path.is_file() or not (decoder_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"decoder_dir: {decoder_dir} is not a trained decoder folder (no {METADATA_NAME})")
    meta = json.loads(meta_path.read_text())
    return ProfileAssets(
        decoder_dir=decoder_dir,
        encoder_checkpoint=decoder_dir / ENCODER_DIR / "encoder.pt",
        anchors=np.load(decoder_dir / ANCHORS_NAME, allow_pickle=False).astype(np.float32),
        class_names=list(meta["class_names"]),
        config=DecoderTrainConfig.model_validate(meta["config"]),
        record=dict(meta["record"]),
    )


def cache_path(config: DecoderTrainConfig, home: str | Path) -> Path:
    return Path(home) / CACHE_DIR / f"{config.profile}-{config.split().key}-{config.key()}"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_profile_assets(
    profile: str,
    home: str | Path | None = None,
    *,
    config: DecoderTrainConfig | None = None,
    holdout: tuple[int, ...] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> ProfileAssets:
    """The cached decoder of ``profile`` for the split holding out ``holdout`` (None: the profile's default;
    default settings unless ``config``, which names its own split), trained on first use.

    ``home`` defaults to ``OODSYNTH_HOME``. Training shows tqdm bars when
    ``progress``; ``echo`` receives one line per finished stage.
    """
    if home is None:
        from ..config import get_settings

        home = get_settings().home
    config = config or profile_config(profile, holdout)
    if config.profile != profile:
        raise ValueError(f"config: its profile {config.profile!r} is not {profile!r}")
    target = cache_path(config, home)
    if (target / METADATA_NAME).is_file():
        return load_profile_assets(target)
    with _locked(target.with_name(target.name + ".lock")):
        if (target / METADATA_NAME).is_file():  # another process finished it while we waited
            return load_profile_assets(target)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        if echo:
            echo(f"decoder: training the {profile} decoder into {target} (cached for later runs)")
        train_decoder(config, tmp, progress=progress, echo=echo)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return load_profile_assets(target)
