"""Decode outlier token embeddings into images with Stable Diffusion.

Each outlier vector stands in for a class word: it becomes the token-embedding
row of a placeholder token, and the prompt "A high-quality image of the
<placeholder>" is denoised into an image. Placeholder tokens are added to the
tokenizer ONCE, one per batch slot (``<oodsynth-0>`` ... ``<oodsynth-{n-1}>``),
and the embedding table is resized once at load; each batch only overwrites
the rows of the slots it uses. Prompt i of a batch uses slot i, so every image
has its own vector, and each image has its own seeded generator and initial
latents, so a rerun reproduces its pixels whatever batch it lands in.

The loaded pipeline is kept for the life of the object: a worker builds one
``OutlierDecoder`` per process and feeds it every job. A decode preset
(``oodsynth.decoding.presets.PRESETS``) picks the solver and step count and, for ``fast``,
swaps in ``oodsynth.decoding.deep_cache.DeepCacheUNet`` for the UNet during the call
(with ``compile_unet``, every preset runs on that stand-in's compiled steps).
With ``init_images`` a decode starts from real images instead of pure noise (SDEdit, ``decoding.img2img``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..batching import slices
from ..device import default_device
from ..errors import InputError
from .img2img import InitImages, check_strength, img2img_pipeline, init_batch
from .presets import (
    DEFAULT_PRESET,
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_STRENGTH,
    PRESETS,
    SCHEDULERS,
    TOKEN_FIELD,
    DecodePreset,
    check_decode_args,
)

PLACEHOLDER = "<oodsynth-{slot}>"
DEFAULT_N_SLOTS = 64

Progress = Callable[[int, int], None]


def _scheduler_class(name: str):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    return {
        "pndm": PNDMScheduler,
        "ddim": DDIMScheduler,
        "dpm++": DPMSolverMultistepScheduler,
        "dpm": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "euler_a": EulerAncestralDiscreteScheduler,
    }[name]


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on CUDA (SD v1.x runs fine in half precision), fp32 elsewhere (CPU half is slow and lossy)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_pipeline(
    model: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    channels_last: bool | None = None,
    fuse_qkv: bool = False,
):
    """``StableDiffusionPipeline.from_pretrained`` (hub id or local folder), safety checker off.

    The UNet and VAE run with PyTorch's scaled-dot-product attention.
    ``fuse_qkv`` fuses each attention's q/k/v projections into one matmul
    (diffusers' ``fuse_qkv_projections``). Channels-last measured slower on an
    H200 (``bench/decode.py``, SD v1.4's architecture), so it stays opt-in
    (``channels_last=True``). Compilation is
    ``OutlierDecoder``'s business (see ``compile_unet`` there).
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0

    device = torch.device(device or default_device())
    dtype = dtype or default_dtype(device)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(model), dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    pipe = pipe.to(device)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if fuse_qkv:
        pipe.fuse_qkv_projections(unet=True, vae=True)
    return pipe


class OutlierDecoder:
    """A loaded SD pipeline that turns (vector, seed) pairs into images, one vector per image.

    Vectors are written as-is into the placeholder rows: rescaling each one to
    its class anchor's norm is the caller's job (the samplers do it with
    ``scale_to_anchor=True``).
    """

    def __init__(
        self,
        model: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        n_slots: int = DEFAULT_N_SLOTS,
        *,
        channels_last: bool | None = None,
        fuse_qkv: bool = False,
        compile_unet: bool = False,
        progress_bar: bool = False,
    ):
        if int(n_slots) < 1:
            raise InputError("n_slots", f"must be >= 1, got {n_slots}")
        self.model = str(model)
        self.n_slots = int(n_slots)
        self.pipe = load_pipeline(model, device, dtype, channels_last=channels_last, fuse_qkv=fuse_qkv)
        self.pipe.set_progress_bar_config(disable=not progress_bar)
        self.device = self.pipe.device
        self.dtype = self.pipe.unet.dtype
        self.placeholders = [PLACEHOLDER.format(slot=i) for i in range(self.n_slots)]
        self.slot_ids = self._add_placeholders()
        # The slots are single-vector tokens, so diffusers' multi-vector textual-inversion rewrite of each prompt
        # has nothing to do; it rebuilds the tokenizer's added-token table for every token of every prompt, which
        # measured 43 % of a 512-image decode with 1,024 slots (cProfile). Skip it for this pipeline only.
        self.pipe.maybe_convert_prompt = lambda prompt, tokenizer: prompt
        self._scheduler_config = self.pipe.scheduler.config
        self._schedulers: dict[str, object] = {}
        self._compile = compile_unet
        self._step_unets: dict[int, object] = {}  # cache branch -> DeepCacheUNet
        self._steps_compiled = False
        self._img2img = None  # built on the first decode with init images
        if compile_unet:
            self._compile_unet()

    # -- set-up ---------------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        return int(self.pipe.text_encoder.config.hidden_size)

    def _add_placeholders(self) -> torch.Tensor:
        """Add the slot tokens once and grow the embedding table once (never per batch)."""
        tokenizer, text_encoder = self.pipe.tokenizer, self.pipe.text_encoder
        clash = [t for t in self.placeholders if t in tokenizer.get_vocab()]
        if clash:
            raise InputError("model", f"tokenizer already contains placeholder tokens {clash[:3]}")
        tokenizer.add_tokens(self.placeholders)
        ids = tokenizer.convert_tokens_to_ids(self.placeholders)
        table = text_encoder.get_input_embeddings().weight
        if max(ids) >= table.shape[0]:
            text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            table = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            # Start the slots at the mean row: a neutral token until a batch overwrites it.
            table[ids] = table[: min(ids)].mean(dim=0, keepdim=True).to(table.dtype)
        return torch.tensor(ids, dtype=torch.long, device=table.device)

    def _scheduler(self, name: str):
        if name not in SCHEDULERS:
            raise InputError("scheduler", f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
        if name not in self._schedulers:
            # Every scheduler takes the model's own noise schedule (betas, offsets) from its config.
            self._schedulers[name] = _scheduler_class(name).from_config(self._scheduler_config)
        return self._schedulers[name]

    def _compile_unet(self) -> None:
        """Compile the UNet's two step functions, on which every preset then runs (``exact``: full steps only).

        ``exact`` and ``fast`` so share one compiled full step instead of
        compiling the UNet twice (once whole, once as ``full_step``). A UNet
        that feature reuse does not support (not SD v1.x's layout) is compiled
        whole instead, and ``fast`` is refused for it. torch.compile's defaults
        (static graphs first): ``dynamic=True`` compiled far longer and ran
        slower on an H200 (bench/results/decode_gpu/decode_gpu.md).
        """
        try:
            self._step_unet(0)
            self._steps_compiled = True
        except ValueError:
            self.pipe.unet = torch.compile(self.pipe.unet)

    def _step_unet(self, branch: int):
        """The UNet stand-in that runs full and shallow steps from ``branch`` (built, and compiled, once per process)."""
        from .deep_cache import DeepCacheUNet

        if branch not in self._step_unets:
            unet = DeepCacheUNet(self.pipe.unet, interval=1, branch=branch)
            if self._compile:
                unet.compile_steps()
            self._step_unets[branch] = unet
        return self._step_unets[branch]

    @staticmethod
    def resolve_preset(preset: str | DecodePreset) -> DecodePreset:
        """A preset by name (``oodsynth.decoding.presets.PRESETS``), or a ``DecodePreset`` as given (benchmarks try variants)."""
        if isinstance(preset, DecodePreset):
            return preset
        if preset not in PRESETS:
            raise InputError("preset", f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[preset]

    def plan(self, preset: str | DecodePreset, steps: int, scheduler: str) -> dict:
        """What a decode with ``preset`` runs: {preset, scheduler, steps, cache_interval} (also its manifest fields)."""
        p = self.resolve_preset(preset)
        return {
            "preset": p.name,
            "scheduler": p.scheduler or scheduler,
            "steps": p.steps(steps),
            "cache_interval": p.cache_interval,
        }

    # -- validation -------------------------------------------------------------------------------

    def _check_vectors(self, vectors) -> torch.Tensor:
        v = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if v.ndim != 2:
            raise InputError("vectors", f"expected a (B, D) array, got shape {tuple(v.shape)}")
        if v.shape[1] != self.hidden_size:
            raise InputError(
                "vectors", f"dimension {v.shape[1]} does not match the text encoder's hidden size {self.hidden_size}"
            )
        if not torch.isfinite(v).all():
            raise InputError("vectors", "contain NaN or infinite values")
        return v

    @staticmethod
    def _check_template(prompt_template: str) -> str:
        if not isinstance(prompt_template, str) or prompt_template.count(TOKEN_FIELD) != 1:
            raise InputError("prompt_template", f"must contain {TOKEN_FIELD} exactly once, got {prompt_template!r}")
        return prompt_template

    # -- the two steps ----------------------------------------------------------------------------

    @torch.no_grad()
    def write_slots(self, vectors) -> list[str]:
        """Overwrite the first B slot rows with ``vectors``; return the B placeholder tokens."""
        v = self._check_vectors(vectors)
        if len(v) > self.n_slots:
            raise InputError("vectors", f"batch of {len(v)} exceeds the decoder's {self.n_slots} slots")
        table = self.pipe.text_encoder.get_input_embeddings().weight
        table[self.slot_ids[: len(v)]] = v.to(device=table.device, dtype=table.dtype)
        return self.placeholders[: len(v)]

    @torch.no_grad()
    def prompt_embeds(
        self, vectors, prompt_template: str = DEFAULT_PROMPT_TEMPLATE, guidance_scale: float = 7.5
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-image (prompt_embeds, negative_prompt_embeds); prompt i holds vector i in slot i."""
        self._check_template(prompt_template)
        tokens = self.write_slots(vectors)
        prompts = [prompt_template.replace(TOKEN_FIELD, t) for t in tokens]
        return self.pipe.encode_prompt(
            prompts, self.device, num_images_per_prompt=1, do_classifier_free_guidance=guidance_scale > 1.0
        )

    def initial_latents(self, seeds: Sequence[int], height: int, width: int) -> tuple[torch.Tensor, list]:
        """One CPU generator per image, seeded by the image's seed: the same noise in any batch, on any device."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (
            1,
            self.pipe.unet.config.in_channels,
            height // self.pipe.vae_scale_factor,
            width // self.pipe.vae_scale_factor,
        )
        generators = self.generators(seeds)
        latents = torch.cat([randn_tensor(shape, generator=g, dtype=torch.float32) for g in generators])
        return latents.to(device=self.device, dtype=self.dtype), generators

    @torch.no_grad()
    def decode(
        self,
        vectors,
        seeds: Sequence[int],
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        steps: int = 50,
        guidance_scale: float = 7.5,
        height: int = 512,
        width: int = 512,
        output_size: int | None = 256,
        scheduler: str = "pndm",
        preset: str | DecodePreset = DEFAULT_PRESET,
        progress: Progress | None = None,
        output_type: str = "pil",
        init_images: InitImages | None = None,
        strength: float | None = None,
    ) -> list[Image.Image]:
        """Decode B vectors (B, D) into B PIL images, in chunks of at most ``n_slots``.

        ``init_images`` (img2img, SDEdit): one start image per vector, a list of PIL images or a (B, 3, H, W)
        tensor in [0, 1], resized to ``height`` x ``width``; each is noised to ``strength`` in (0, 1] of the
        schedule (default 0.8; ``int(steps * strength)`` denoising steps run; 1.0 keeps little of the image)
        and denoised towards its vector. Without them, every image starts from its seed's noise.

        ``preset`` (``oodsynth.decoding.presets.PRESETS``): ``exact`` runs the settings as
        given; ``fast`` changes the solver, the step count and reuses deep
        features (``plan`` says what runs). ``output_type="latent"`` returns the
        final latents (B, C, h, w) instead, before the VAE (for fidelity checks).
        ``progress(done_images, total_images)`` is called after each chunk.
        """
        v = self._check_vectors(vectors)
        seeds = [int(s) for s in seeds]
        check_decode_args(len(v), seeds, height, width, steps, guidance_scale, output_size, output_type)
        self._check_template(prompt_template)
        plan = self.plan(preset, int(steps), scheduler)
        self.pipe.scheduler = self._scheduler(plan["scheduler"])
        init, strength = self._init(init_images, strength, plan["steps"], len(v), int(height), int(width))
        p = self.resolve_preset(preset)
        stand_in = self._step_unet(p.cache_branch) if p.cache_interval > 1 or self._steps_compiled else None

        images: list = []
        for chunk in slices(len(v), self.n_slots):
            cond, uncond = self.prompt_embeds(v[chunk], prompt_template, guidance_scale)
            call = dict(
                prompt_embeds=cond,
                negative_prompt_embeds=uncond,
                num_inference_steps=plan["steps"],
                guidance_scale=float(guidance_scale),
                output_type=output_type,
            )
            if init is None:
                latents, generators = self.initial_latents(seeds[chunk], int(height), int(width))
                call.update(latents=latents, generator=generators, height=int(height), width=int(width))
                pipe = self.pipe
            else:  # the img2img pipeline draws the VAE sample and the noise from each image's own generator
                call.update(image=init[chunk], strength=strength, generator=self.generators(seeds[chunk]))
                pipe = self.img2img()
            out = pipe(**call).images if stand_in is None else self._call_with(pipe, stand_in, p.cache_interval, call)
            if output_type == "pil" and output_size is not None:
                size = (int(output_size), int(output_size))
                out = [im if im.size == size else im.resize(size, Image.Resampling.LANCZOS) for im in out]
            images.extend(out)
            if progress is not None:
                progress(len(images), len(v))
        return images

    def _call_with(self, pipe, unet, interval: int, call: dict) -> list:
        """Run ``pipe`` once with ``unet`` standing in for its UNet (a fresh reuse schedule), then put it back."""
        original = pipe.unet
        unet.reset(interval)
        pipe.unet = unet
        try:
            return pipe(**call).images
        finally:
            pipe.unet = original
            unet.reset()  # drop the kept feature: no activation outlives the call

    # -- img2img ----------------------------------------------------------------------------------

    def img2img(self):
        """diffusers' img2img pipeline over this decoder's modules, on the scheduler the current decode uses."""
        if self._img2img is None:
            self._img2img = img2img_pipeline(self.pipe)
        self._img2img.scheduler = self.pipe.scheduler
        return self._img2img

    def _init(self, init_images, strength, steps: int, n: int, height: int, width: int) -> tuple:
        """(init images (n, 3, H, W) in [0, 1], strength), or (None, None) for text-to-image."""
        if init_images is None:
            if strength is not None:
                raise InputError("strength", "only used with init_images (img2img)")
            return None, None
        strength = check_strength(DEFAULT_STRENGTH if strength is None else strength, steps)
        return init_batch(init_images, n, height, width, self.pipe.image_processor), strength

    @staticmethod
    def generators(seeds: Sequence[int]) -> list:
        """One CPU generator per image, seeded by the image's seed (the same draws in any batch, on any device)."""
        return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
