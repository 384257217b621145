"""Decode presets and the decode vocabulary (schedulers, prompt template): torch-free constants.

The worker's pipeline (``decoding.pipeline``) applies them; the queue payload
(``queue.payloads``) and the API validate against them without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The decode vocabulary (torch-free, so the API and the queue payload check it without importing torch). "dpm" is an alias of "dpm++" (DPM-Solver++ multistep); "euler_a"
# is Euler ancestral (stochastic: it draws its noise from the per-image generators, so it
# stays reproducible per seed).
SCHEDULERS = ("pndm", "ddim", "dpm++", "dpm", "euler", "euler_a")
TOKEN_FIELD = "{token}"
DEFAULT_PROMPT_TEMPLATE = "A high-quality image of the {token}"


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
