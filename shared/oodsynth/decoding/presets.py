"""Decode presets, the decode vocabulary (schedulers, prompt template, img2img strength) and the checks of a
decode's arguments: torch-free.

The worker's pipeline (``decoding.pipeline``) applies them; the queue payload
(``queue.payloads``) and the API validate against them without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError

# The decode vocabulary (torch-free, so the API and the queue payload check it without importing torch). "dpm" is an alias of "dpm++" (DPM-Solver++ multistep); "euler_a"
# is Euler ancestral (stochastic: it draws its noise from the per-image generators, so it
# stays reproducible per seed).
SCHEDULERS = ("pndm", "ddim", "dpm++", "dpm", "euler", "euler_a")
TOKEN_FIELD = "{token}"
DEFAULT_PROMPT_TEMPLATE = "A high-quality image of the {token}"
MAX_SEED = 2**63 - 1
# img2img (SDEdit): the share of the noise schedule an init image is noised to; diffusers' own default.
DEFAULT_STRENGTH = 0.8


def denoise_steps(steps: int, strength: float) -> int:
    """Denoising steps an img2img decode runs: diffusers' ``int(steps * strength)`` (capped at ``steps``)."""
    return min(int(int(steps) * float(strength)), int(steps))


def strength_error(strength: float, steps: int) -> str | None:
    """Why ``strength`` cannot run at ``steps`` (the steps after the preset), or None when it can."""
    if isinstance(strength, bool) or not (
        isinstance(strength, int | float) and math.isfinite(strength) and 0.0 < strength <= 1.0
    ):
        return f"must lie in (0, 1], got {strength!r}"
    if denoise_steps(steps, strength) < 1:
        return f"{strength:g} of {steps} steps runs no denoising step; give strength >= {1 / steps:.3g} or more steps"
    return None


@dataclass(frozen=True)
class DecodePreset:
    """How a preset changes a job's decode: which solver, what share of the steps, how much feature reuse.

    ``exact`` is the job's own settings, untouched. ``fast`` swaps the job's
    scheduler for DPM-Solver++ (2nd-order multistep), which reaches the
    quality of 50 PNDM/PLMS steps in 20-25 (Lu et al. 2022), at half the
    steps, and reuses the UNet's deep features between full steps
    (``oodsynth.decoding.deep_cache``, after DeepCache, Ma et al. 2024): one full UNet
    pass every ``cache_interval`` steps, the shallowest branch only in between.
    """

    name: str
    scheduler: str | None  # None: the job's own scheduler
    step_fraction: float  # denoising steps = ceil(job steps x fraction)
    cache_interval: int  # 1: no feature reuse
    cache_branch: int = 0  # the skip branch the shallow steps recompute (0: the shallowest)

    def steps(self, job_steps: int) -> int:
        return max(1, math.ceil(int(job_steps) * self.step_fraction))


# Measured fidelity (fast against exact on the same vectors and seeds, and each lever alone):
# bench/results/decode_presets/decode_presets.md. Reuse every 3rd step on top of half the DPM-Solver++ steps
# lost more than the 2-point bar of anchor accuracy there, so fast runs the full UNet every 2nd step.
PRESETS = {
    "exact": DecodePreset("exact", scheduler=None, step_fraction=1.0, cache_interval=1),
    "fast": DecodePreset("fast", scheduler="dpm++", step_fraction=0.5, cache_interval=2),
}
DEFAULT_PRESET = "exact"


def check_decode_args(n, seeds: Sequence[int], height, width, steps, guidance_scale, output_size, output_type) -> None:
    """A library decode's seeds, sizes, steps and guidance, each named when out of range (the API's are pydantic's)."""
    if len(seeds) != n:
        raise InputError("seeds", f"got {len(seeds)} seeds for {n} vectors")
    if any(s < 0 or s > MAX_SEED for s in seeds):
        raise InputError("seeds", f"must lie in [0, {MAX_SEED}]")
    for field, value in (("height", height), ("width", width)):
        if int(value) <= 0 or int(value) % 8:
            raise InputError(field, f"must be a positive multiple of 8, got {value}")
    if int(steps) < 1:
        raise InputError("steps", f"must be >= 1, got {steps}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise InputError("guidance_scale", f"must be a finite number >= 0, got {guidance_scale}")
    if output_size is not None and int(output_size) <= 0:
        raise InputError("output_size", f"must be positive, got {output_size}")
    if output_type not in ("pil", "latent"):
        raise InputError("output_type", f"must be 'pil' or 'latent', got {output_type!r}")
