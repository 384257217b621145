"""What one offline-decoder training run is asked to do (``DecoderTrainConfig``, whose hash keys the decoder
cache) and each profile's default settings (``profile_config``); ``training`` runs it."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from ..data import OFFLINE_PROFILES, ProfileSplit
from ..errors import InputError

METADATA_NAME = "decoder.json"
ANCHORS_NAME = "anchors.npy"
ENCODER_DIR = "encoder"
PROFILES = ("digits", "animals")


class DecoderTrainConfig(BaseModel):
    """Every setting of one decoder training run; its hash keys the cache."""

    model_config = ConfigDict(extra="forbid")

    profile: str = "digits"
    image_size: int = Field(16, ge=8, description="decode size in pixels (a multiple of 8, the pipeline's rule)")
    seed: int = 0
    row_norm: float = Field(0.38, gt=0, description="norm of the random token rows (SD v1.x: 0.34-0.42)")
    holdout: tuple[int, ...] | None = Field(
        None, description="held-out (near-OOD) class indices of the profile; None: the profile's default split"
    )
    classes: tuple[str, ...] | None = Field(
        None, description="train on these classes only (small test decoders): every other class is held out"
    )
    # image encoder
    encoder_arch: str = "resnet18"
    encoder_width: int = Field(8, ge=1)
    encoder_epochs: int = Field(15, ge=1)
    encoder_batch_size: int = Field(128, ge=1)
    encoder_lr: float = Field(0.05, gt=0)
    # VAE
    vae_channels: int = Field(16, ge=4)
    latent_channels: int = Field(4, ge=1)
    vae_steps: int = Field(120, ge=1)
    vae_batch_size: int = Field(32, ge=1)
    vae_lr: float = Field(2e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
    # UNet
    unet_channels: tuple[int, ...] = (32, 64)
    cross_attention_dim: int = Field(64, ge=8)
    unet_steps: int = Field(600, ge=1)
    unet_batch_size: int = Field(64, ge=1, description="images per step")
    unet_lr: float = Field(2e-3, gt=0)
    p_anchor: float = Field(0.35, ge=0, le=1, description="share of steps conditioned on the exact anchor")
    p_uncond: float = Field(0.1, ge=0, le=1, description="share conditioned on the empty prompt (for CFG)")
    ema_decay: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="decay of an exponential moving average of the UNet's weights, saved instead of the last "
        "weights (diffusers' EMAModel, with its warm-up); 0: off",
    )
    snr_gamma: float | None = Field(
        None,
        gt=0,
        description="min-SNR loss weighting (Hang et al. 2023): each timestep's v-loss weighted by "
        "min(SNR, gamma) / (SNR + 1), so the easy low-noise steps stop dominating; None: plain v-loss",
    )
    # recommended decode settings, recorded for callers
    decode_steps: int = Field(20, ge=1)
    guidance_scale: float = Field(2.0, ge=0)

    def split(self) -> ProfileSplit:
        """The profile split the decoder and its encoder are trained on (``classes`` holds out every other)."""
        if not self.classes:
            return (
                ProfileSplit.default(self.profile) if self.holdout is None else ProfileSplit(self.profile, self.holdout)
            )
        words = OFFLINE_PROFILES[self.profile].words if self.profile in OFFLINE_PROFILES else ()
        unknown = [c for c in self.classes if c not in words]
        if unknown:
            raise InputError("classes", f"{unknown} are not classes of {self.profile} ({', '.join(words)})")
        return ProfileSplit(self.profile, tuple(i for i, w in enumerate(words) if w not in self.classes))

    def key(self) -> str:
        """Hash of every setting and of the split (held-out classes and a hash of its data)."""
        import hashlib

        settings = self.model_dump(mode="json", exclude_none=True)
        settings["split"] = self.split().key
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


# Settings that differ per profile; everything else is shared.
# Quality first: every split decoder must pass the quality gate (offline_decoder.gate). The cheaper split decoder
# (encoder 8 epochs, VAE 300 steps, UNet 600 x 32 images at lr 3e-3, 4 DDIM steps unguided; 213 CPU-s) failed it on
# animals dev-0 (anchors 0.57, midpoints 0.68, reconstructions' median ID percentile 2.2), and so did 1,200 x 64 with
# EMA weights (0.84, 0.86, 9.8 at 4 steps; 0.95, 0.95, 25.5 at 20 guided steps). These settings (the 15-epoch
# encoder, a 600-step VAE, 2,000 UNet steps of 64 images, 20 DDIM steps at guidance 2) pass it: 1.00, 0.96, 44.8
# (real test images 50.2), at 1,092 CPU-s per split; with EMA weights (decay 0.999) 1.00, 0.95, 50.1 at the same
# cost (1,106 CPU-s): its reconstructions of real images re-encode like the real ones, which leaves a detector the
# least to learn from the decoder's look (bench/results/decoder_gate/).
SPLIT_DECODER = {
    "image_size": 16,
    "encoder_epochs": 15,
    "vae_steps": 600,
    "unet_steps": 2000,
    "unet_batch_size": 64,
    "unet_lr": 2e-3,
    "decode_steps": 20,
    "guidance_scale": 2.0,
    "ema_decay": 0.999,
}
PROFILE_SETTINGS: dict[str, dict] = {"digits": SPLIT_DECODER, "animals": SPLIT_DECODER}


def profile_config(profile: str, holdout: tuple[int, ...] | None = None, **overrides) -> DecoderTrainConfig:
    """The default training settings of ``profile`` for the split holding out ``holdout`` (None: the profile's
    default), with ``overrides`` on top."""
    if profile not in PROFILE_SETTINGS:
        raise InputError("profile", f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_SETTINGS)}")
    split = ProfileSplit.default(profile) if holdout is None else ProfileSplit(profile, tuple(holdout))
    return DecoderTrainConfig(
        **{"profile": profile, "holdout": split.holdout, **PROFILE_SETTINGS[profile], **overrides}
    )
