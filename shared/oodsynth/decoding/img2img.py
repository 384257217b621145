"""SDEdit: decode an outlier vector starting from a real image of its class, noised to a ``strength``.

Gains on near-OOD come from starting at real ID pixels (DESIGN.md: SONA, SDEdit-style img2img): the init
image is encoded by the VAE, noised to ``strength`` of the schedule and denoised towards the prompt that
holds the outlier vector. diffusers' ``StableDiffusionImg2ImgPipeline`` does that; it is built once from the
loaded pipeline's components (the same modules, no second copy of the weights), and ``OutlierDecoder``
feeds it the same placeholder-slot prompt embeddings and per-image seeded generators as text-to-image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from .presets import strength_error

InitImages = Sequence[Image.Image] | torch.Tensor


def img2img_pipeline(pipe):
    """An img2img pipeline over ``pipe``'s own modules (UNet, VAE, text encoder, tokenizer, scheduler)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return img2img


def check_strength(strength: float, steps: int) -> float:
    """``strength`` in (0, 1] and at least one denoising step at ``steps``; ``InputError("strength")`` otherwise."""
    message = strength_error(strength, steps)
    if message is not None:
        raise InputError("strength", message)
    return float(strength)


def init_batch(init_images: InitImages, n: int, height: int, width: int, processor) -> torch.Tensor:
    """The init images as one float tensor (n, 3, height, width) in [0, 1], resized to the decode size.

    PIL images go through diffusers' ``VaeImageProcessor`` (RGB, its resampling); a tensor must already be
    (n, 3, H, W) in [0, 1] and is resized bilinearly when its size differs.
    """
    if isinstance(init_images, torch.Tensor):
        x = _checked_tensor(init_images)
    else:
        images = list(init_images)
        bad = [i for i, im in enumerate(images) if not isinstance(im, Image.Image)]
        if bad:
            raise InputError(f"init_images[{bad[0]}]", f"expected a PIL image, got {type(images[bad[0]]).__name__}")
        if not images:
            raise InputError("init_images", "give one init image per vector, got none")
        resized = [processor.resize(im.convert("RGB"), height, width) for im in images]
        x = processor.numpy_to_pt(processor.pil_to_numpy(resized))
    if len(x) != n:
        raise InputError("init_images", f"got {len(x)} init images for {n} vectors (one per vector)")
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x


def _checked_tensor(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError("init_images", f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float32)
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise InputError("init_images", "tensor values must be finite and lie in [0, 1]")
    return x
