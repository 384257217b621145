"""Train the offline decoder of a data profile: text encoder -> anchors -> image encoder -> VAE -> UNet.

The chain, in order (each step needs the one before):

1. write a tokenizer + random one-layer CLIP text encoder whose vocabulary
   holds the profile's class words (``tiny_model``);
2. anchors T(y) = the class words' token rows;
3. train the text-aligned image encoder on the profile's ID train split
   (``encoder_training.train_encoder``, a narrow ResNet for a few epochs);
4. train the VAE briefly as an autoencoder of the same images;
5. train the UNet to denoise each training image's latents conditioned on the
   text encoder's hidden states for the prompt whose class-word slot holds
   THAT image's encoder feature, scaled to its anchor's norm. Features spread
   around each anchor, so the region between anchors is trained, not only the
   anchors. A share of the steps is conditioned on the exact anchor (the point
   the samplers start from) and a share on the empty prompt (for
   classifier-free guidance).

The result is one folder: a ``StableDiffusionPipeline`` (``model_index.json``,
tokenizer, text_encoder, unet, vae, scheduler; no safety checker) that the
worker loads unchanged, plus ``encoder/encoder.pt``, ``anchors.npy`` and
``decoder.json`` (settings, class names, training record).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..data import image_tensors
from ..errors import InputError
from .config import (  # noqa: F401  (re-exported: callers import the settings from here too)
    ANCHORS_NAME,
    ENCODER_DIR,
    METADATA_NAME,
    PROFILE_SETTINGS,
    PROFILES,
    SPLIT_DECODER,
    DecoderTrainConfig,
    profile_config,
)


@dataclass
class TrainedDecoder:
    """What ``train_decoder`` wrote: the pipeline folder, the encoder checkpoint, the anchors."""

    decoder_dir: Path
    encoder_checkpoint: Path
    anchors: np.ndarray
    class_names: list[str]
    config: DecoderTrainConfig
    record: dict


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)


def _to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Dataset images in [0, 1] -> the pipeline's pixel range [-1, 1]."""
    return x * 2 - 1


def train_vae(vae, images: torch.Tensor, config: DecoderTrainConfig, progress: bool = True) -> dict:
    """Reconstruction + tiny KL (as SD's VAE); then set ``scaling_factor`` = 1 / std of the latents."""
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.vae_steps)
    vae.train()
    bar = _bar(config.vae_steps, "decoder: vae", progress)
    for _ in range(config.vae_steps):
        x = images[torch.randint(len(images), (config.vae_batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        rec = F.mse_loss(recon, x)
        loss = rec + config.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(mse=f"{rec.item():.4f}")
    bar.close()
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
        recon = torch.cat([vae.decode(latents[i : i + 256]).sample for i in range(0, len(latents), 256)])
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    return {"recon_mse": float(F.mse_loss(recon, images)), "scaling_factor": scaling}


def text_states(conditioner, vectors: torch.Tensor, chunk: int = 128, progress: bool = True) -> torch.Tensor:
    """(N, 77, 768) float16 hidden states, one per training vector, computed once.

    The text encoder is fixed, so each image's conditioning never changes:
    computing it once (float16 halves the memory: 120 MB for digits, 580 MB
    for animals) leaves only the UNet in the training loop.
    """
    parts = []
    for start in tqdm(range(0, len(vectors), chunk), desc="decoder: text states", disable=not progress, leave=False):
        parts.append(conditioner(vectors[start : start + chunk]).half())
    return torch.cat(parts)


def train_unet(
    unet,
    latents: torch.Tensor,
    states: torch.Tensor,
    labels: torch.Tensor,
    anchor_states: torch.Tensor,
    empty_states: torch.Tensor,
    config: DecoderTrainConfig,
    progress: bool = True,
) -> dict:
    """v-prediction DDPM loss; each image conditioned on its own vector's states (or its anchor's, or none).
    With ``ema_decay`` the saved weights are the moving average; with ``snr_gamma`` the loss is min-SNR weighted."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr

    from .models import SCHEDULER_CONFIG

    noise_scheduler = DDPMScheduler.from_config(SCHEDULER_CONFIG)
    alphas = noise_scheduler.alphas_cumprod.float()
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, use_ema_warmup=True) if config.ema_decay else None
    gen = torch.Generator().manual_seed(config.seed + 1)
    opt = torch.optim.AdamW(unet.parameters(), lr=config.unet_lr, weight_decay=1e-4)
    warmup = min(100, config.unet_steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, config.unet_steps) / config.unet_steps))
        ),
    )
    unet.train()
    losses = []
    bar = _bar(config.unet_steps, "decoder: unet", progress)
    for step in range(config.unet_steps):
        idx = torch.randint(len(latents), (config.unet_batch_size,), generator=gen)
        mode = torch.rand(len(idx), generator=gen)
        cond = states[idx].float()
        use_anchor = mode < config.p_anchor
        use_empty = (mode >= config.p_anchor) & (mode < config.p_anchor + config.p_uncond)
        cond[use_anchor] = anchor_states[labels[idx][use_anchor]]
        cond[use_empty] = empty_states
        x0 = latents[idx]
        t = torch.randint(len(alphas), (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        error = (unet(noisy, t, encoder_hidden_states=cond).sample - target).pow(2).mean(dim=(1, 2, 3))
        if config.snr_gamma is not None:
            snr = compute_snr(noise_scheduler, t)
            error = error * torch.clamp(snr, max=config.snr_gamma) / (snr + 1)  # v-prediction's min-SNR weight
        loss = error.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(loss.item())
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    bar.close()
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.eval()
    return {"final_loss": float(np.mean(losses[-100:]))}


def _anchors(config: DecoderTrainConfig, out: Path, class_names: list[str], say) -> np.ndarray:
    """Steps 1-2: the tiny CLIP text encoder whose vocabulary holds the class words, and their rows (anchors)."""
    from ..encoding.anchors import extract_anchors
    from .models import TEMPLATE_WORDS
    from .tiny_model import write_tiny_clip_text

    words = list(dict.fromkeys(class_names + list(TEMPLATE_WORDS)))
    write_tiny_clip_text(out, words, seed=config.seed, row_norm=config.row_norm)
    anchors = extract_anchors(out, class_names, multi_token="error")
    np.save(out / ANCHORS_NAME, anchors)
    say(f"anchors: {len(class_names)} class words, row norms {np.linalg.norm(anchors, axis=1).mean():.3f}")
    return anchors


def _image_encoder(config: DecoderTrainConfig, train, anchors: np.ndarray, out: Path, progress: bool, say):
    """Step 3: the text-aligned encoder; returns each training image's feature scaled to its anchor's norm (the
    UNet's conditioning), the labels and the encoder's figures."""
    from ..encoding.features import extract_features
    from ..encoding.training import EncoderTrainConfig, train_encoder

    enc_config = EncoderTrainConfig(
        arch=config.encoder_arch,
        width=config.encoder_width,
        epochs=config.encoder_epochs,
        batch_size=config.encoder_batch_size,
        lr=config.encoder_lr,
        seed=config.seed,
        dataset=config.profile,
        image_size=config.image_size,
        mean=train.mean,
        std=train.std,
    )
    torch.manual_seed(config.seed)
    encoder = train_encoder(enc_config, train, anchors, out / ENCODER_DIR, device="cpu", progress=progress)
    features, labels = extract_features(encoder.model, train, progress=False)
    anchor_t, labels_t, feats_t = torch.from_numpy(anchors), torch.from_numpy(labels), torch.from_numpy(features)
    own_cos = (feats_t * F.normalize(anchor_t, dim=1)[labels_t]).sum(1)
    enc_acc = float(((feats_t @ F.normalize(anchor_t, dim=1).T).argmax(1) == labels_t).float().mean())
    say(f"encoder: train nearest-anchor accuracy {enc_acc:.3f}, cosine to own anchor {own_cos.mean():.2f}")
    vectors = feats_t * anchor_t.norm(dim=1)[labels_t].unsqueeze(1)  # scaled to the anchor norm
    return vectors, labels_t, {"encoder_train_accuracy": enc_acc, "encoder_cosine_to_anchor": float(own_cos.mean())}


def _vae_and_latents(config: DecoderTrainConfig, train, labels: torch.Tensor, progress: bool, say):
    """Step 4: the VAE, and the training images' scaled latents (computed once for the UNet's whole training)."""
    from .models import decoder_vae

    images, image_labels = image_tensors(train)
    assert torch.equal(image_labels, labels)
    pixels = _to_pixels(images)
    torch.manual_seed(config.seed)
    vae = decoder_vae(config.vae_channels, config.latent_channels, config.image_size)
    vae_record = train_vae(vae, pixels, config, progress)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    say(f"vae: reconstruction MSE {vae_record['recon_mse']:.4f} (pixels in [-1, 1])")
    return vae, latents * vae.config.scaling_factor, vae_record


def _text_and_unet(config: DecoderTrainConfig, out: Path, anchors, vectors, latents, labels, progress: bool, say):
    """Step 5: the UNet, trained on each image's own conditioning (text states computed once)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from .models import PromptConditioner, decoder_unet

    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder")
    conditioner = PromptConditioner(tokenizer, text_encoder)
    torch.manual_seed(config.seed)
    unet = decoder_unet(config.image_size, config.latent_channels, config.unet_channels, config.cross_attention_dim)
    states = text_states(conditioner, vectors, progress=progress)
    anchor_states = conditioner(torch.from_numpy(anchors))
    unet_record = train_unet(unet, latents, states, labels, anchor_states, conditioner.empty_states(), config, progress)
    say(f"unet: final denoising loss {unet_record['final_loss']:.4f}")
    return unet, tokenizer, text_encoder, unet_record


def train_decoder(
    config: DecoderTrainConfig,
    out: str | Path,
    *,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> TrainedDecoder:
    """Run the whole chain for ``config.profile`` and write everything into ``out`` (see the module doc)."""
    from diffusers import StableDiffusionPipeline

    from .models import decoder_scheduler

    say = echo or (lambda _msg: None)
    if config.image_size % 8:
        raise InputError(
            "image_size", f"must be a multiple of 8 (StableDiffusionPipeline's rule), got {config.image_size}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = config.split().load("train", config.image_size)
    class_names = list(train.class_names)
    t0, cpu0 = time.perf_counter(), time.process_time()
    anchors = _anchors(config, out, class_names, say)
    vectors, labels, encoder_record = _image_encoder(config, train, anchors, out, progress, say)
    t1 = time.perf_counter()
    vae, latents, vae_record = _vae_and_latents(config, train, labels, progress, say)
    t2 = time.perf_counter()
    unet, tokenizer, text_encoder, unet_record = _text_and_unet(
        config, out, anchors, vectors, latents, labels, progress, say
    )
    t3 = time.perf_counter()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=decoder_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)  # type: ignore[attr-defined]  # diffusers' __init__ types the name as its dummy class
    timings = {
        "encoder_s": t1 - t0,
        "vae_s": t2 - t1,
        "unet_s": t3 - t2,
        "total_s": time.perf_counter() - t0,
        "total_cpu_s": time.process_time() - cpu0,
    }
    record = {
        **encoder_record,
        "n_train_images": len(train),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
        **vae_record,
        **unet_record,
        **{k: round(v, 1) for k, v in timings.items()},
    }
    meta = {"config": config.model_dump(mode="json"), "class_names": class_names, "record": record}
    (out / METADATA_NAME).write_text(json.dumps(meta, indent=2))
    return TrainedDecoder(out, out / ENCODER_DIR / "encoder.pt", anchors, class_names, config, record)
