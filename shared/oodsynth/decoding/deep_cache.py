"""DeepCache-style feature reuse for a diffusers ``UNet2DConditionModel`` (the ``fast`` decode preset).

Between adjacent denoising steps the UNet's deep features barely change
(DeepCache, Ma et al., CVPR 2024). So every ``interval`` steps the whole UNet
runs and the hidden state entering the last up block's branch-``b`` layer is
kept; in between, only the shallow branch runs: ``conv_in``, the first down
block's layers ``0..b`` and the last up block's layers from that point on,
starting from the kept feature. On SD v1.x, branch 0 skips everything but
the 64x64 (at 512²) conv_in, one down layer and two up layers.

Why written here instead of using the ``DeepCache`` package (0.1.1 runs with
diffusers 0.42.1): its helper patches the UNet's block forwards and counts
steps in a Python attribute read inside them, so under ``torch.compile`` every
new counter value is a guard failure and a recompile (measured on an H200:
it hits dynamo's limit of 8). Here the counter lives in ``DeepCacheUNet.forward``,
which is never compiled; it only picks which of two step functions to call,
and those (``full_step``, ``shallow_step``) are pure functions of tensors
(latents, timestep tensor, prompt embeddings, kept feature) that
``compile_steps`` compiles once each per input shape, with no Python state
inside them to guard on. The interval is read only by ``forward`` too, so one
compiled pair serves every interval (``OutlierDecoder`` runs ``exact`` as
interval 1 on it).

A full step computes exactly what ``unet(...)`` computes (tested against it);
only the SD v1.x forward is supported (no ControlNet/adapter residuals,
attention masks, class or added embeddings, FreeU): anything else is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast

import torch
from torch import nn


class _Block(Protocol):
    """A diffusers down or up block: its resnet layers, called with the block's own keywords."""

    resnets: nn.ModuleList

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor | tuple: ...


class _SDUNet(Protocol):
    """What this module reads of a diffusers ``UNet2DConditionModel``.

    mypy sees none of that class's attributes (they are set in an ``__init__`` wrapped by ``register_to_config``);
    ``DeepCacheUNet._check`` tests the layout at run time, and the constructor then treats the module as this.
    """

    down_blocks: Sequence[_Block]
    up_blocks: Sequence[_Block]
    mid_block: nn.Module | None
    num_upsamplers: int
    time_embedding: nn.Module
    time_embed_act: nn.Module | None
    conv_in: nn.Module
    conv_norm_out: nn.Module | None
    conv_act: nn.Module | None
    conv_out: nn.Module


def _down_layers(block, hidden, emb, ehs, n_layers: int, xattn_kwargs) -> list[torch.Tensor]:
    """The first ``n_layers`` (resnet [+ attention]) outputs of a down block, as its skip connections."""
    attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
    outputs = []
    for resnet, attn in list(zip(block.resnets, attentions))[:n_layers]:
        hidden = resnet(hidden, emb)
        if attn is not None:
            hidden = attn(hidden, encoder_hidden_states=ehs, cross_attention_kwargs=xattn_kwargs, return_dict=False)[0]
        outputs.append(hidden)
    return outputs


def _up_layers(
    block, hidden, skips: list[torch.Tensor], emb, ehs, start: int, xattn_kwargs, keep_at: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Layers ``start..`` of the last up block (no upsampler); ``skips`` are consumed from the end, as diffusers does.

    Returns the block's output and, when ``keep_at`` is given, the hidden state entering layer ``keep_at``.
    """
    attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
    kept = None
    for j, (resnet, attn) in enumerate(zip(block.resnets, attentions)):
        if j < start:
            continue
        if j == keep_at:
            kept = hidden
        hidden = resnet(torch.cat([hidden, skips.pop()], dim=1), emb)
        if attn is not None:
            hidden = attn(hidden, encoder_hidden_states=ehs, cross_attention_kwargs=xattn_kwargs, return_dict=False)[0]
    return hidden, kept


class DeepCacheUNet(nn.Module):
    """Stands in for ``pipe.unet`` during a fast decode; attributes it lacks (config, dtype) come from the UNet.

    Call ``reset()`` before each denoising loop: the first call after it is a
    full step, then one full step every ``interval`` calls.
    """

    def __init__(self, unet: nn.Module, interval: int = 3, branch: int = 0):
        super().__init__()
        unet = getattr(unet, "_orig_mod", unet)  # the plain module under a torch.compile wrapper
        self._check(unet, interval, branch)
        self.unet = cast(_SDUNet, unet)
        self.interval, self.branch = int(interval), int(branch)
        n_up = len(self.unet.up_blocks[-1].resnets)
        self.enter = n_up - 2 - self.branch  # last up block's layer that consumes down block 0's layer `branch`
        self._full, self._shallow = self.full_step, self.shallow_step
        self.reset()

    @staticmethod
    def _check(unet, interval: int, branch: int) -> None:
        if int(interval) < 1:
            raise ValueError(f"cache_interval: must be >= 1, got {interval}")
        cfg = unet.config
        unsupported = [k for k in ("class_embed_type", "addition_embed_type", "time_cond_proj_dim") if cfg.get(k)]
        if unsupported or cfg.center_input_sample:
            raise ValueError(
                f"feature reuse supports SD v1.x UNets only; this one sets {unsupported or 'center_input_sample'}"
            )
        down0, last_up = unet.down_blocks[0], unet.up_blocks[-1]
        if not 0 <= int(branch) < len(down0.resnets):
            raise ValueError(f"cache_branch: must lie in [0, {len(down0.resnets)}), got {branch}")
        if getattr(last_up, "upsamplers", None) is not None or len(last_up.resnets) != len(down0.resnets) + 1:
            raise ValueError("feature reuse expects SD's UNet layout (the last up block mirrors down block 0)")

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "unet":
                raise
            return getattr(self._modules["unet"], name)

    def reset(self, interval: int | None = None) -> None:
        """Start a new denoising loop (optionally with another reuse ``interval``; 1: full steps only)."""
        if interval is not None:
            if int(interval) < 1:
                raise ValueError(f"cache_interval: must be >= 1, got {interval}")
            self.interval = int(interval)
        self._calls = 0
        self._kept: torch.Tensor | None = None

    def compile_steps(self, **options) -> None:
        """``torch.compile`` the two step functions (the step counter and the interval stay outside them)."""
        self._full = torch.compile(self.full_step, **options)
        self._shallow = torch.compile(self.shallow_step, **options)

    # -- the two steps (pure tensor functions) -------------------------------------------------------

    def _prelude(self, sample, timestep, ehs, xattn_kwargs):
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        ehs = unet.process_encoder_hidden_states(encoder_hidden_states=ehs, added_cond_kwargs=None)
        return emb, ehs, unet.conv_in(sample)

    def _out(self, hidden):
        unet = self.unet
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)

    def full_step(self, sample, timestep, ehs, xattn_kwargs=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole UNet (as ``UNet2DConditionModel.forward``), and the feature the shallow steps start from."""
        unet = self.unet
        up_factor = 2**unet.num_upsamplers
        forward_upsample_size = any(d % up_factor for d in sample.shape[-2:])
        emb, ehs, hidden = self._prelude(sample, timestep, ehs, xattn_kwargs)
        skips: tuple = (hidden,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(
                    hidden_states=hidden, temb=emb, encoder_hidden_states=ehs, cross_attention_kwargs=xattn_kwargs
                )
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            skips += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                hidden = unet.mid_block(hidden, emb, encoder_hidden_states=ehs, cross_attention_kwargs=xattn_kwargs)
            else:
                hidden = unet.mid_block(hidden, emb)
        for block in unet.up_blocks[:-1]:
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size else None
            if getattr(block, "has_cross_attention", False):
                hidden = block(
                    hidden_states=hidden,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=ehs,
                    cross_attention_kwargs=xattn_kwargs,
                    upsample_size=upsample_size,
                )
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
        hidden, kept = _up_layers(
            unet.up_blocks[-1], hidden, list(skips), emb, ehs, 0, xattn_kwargs, keep_at=self.enter
        )
        assert kept is not None  # self.enter lies in 0..n_up-2 (_check), so layer `enter` runs
        return self._out(hidden), kept

    def shallow_step(self, sample, timestep, ehs, kept, xattn_kwargs=None) -> torch.Tensor:
        """conv_in, down block 0's layers 0..branch, the last up block from the kept feature on."""
        unet = self.unet
        emb, ehs, hidden = self._prelude(sample, timestep, ehs, xattn_kwargs)
        skips = [hidden] + _down_layers(unet.down_blocks[0], hidden, emb, ehs, self.branch + 1, xattn_kwargs)
        hidden, _ = _up_layers(unet.up_blocks[-1], kept, skips, emb, ehs, self.enter, xattn_kwargs)
        return self._out(hidden)

    # -- what the pipeline calls ---------------------------------------------------------------------

    def forward(
        self,
        sample,
        timestep,
        encoder_hidden_states,
        timestep_cond=None,
        cross_attention_kwargs=None,
        added_cond_kwargs=None,
        return_dict: bool = True,
        **unsupported,
    ):
        if timestep_cond is not None or added_cond_kwargs or any(v is not None for v in unsupported.values()):
            raise ValueError("feature reuse supports the plain SD v1.x UNet call only")
        kept = self._kept
        if self._calls % self.interval == 0 or kept is None or kept.shape[0] != sample.shape[0]:
            out, self._kept = self._full(sample, timestep, encoder_hidden_states, cross_attention_kwargs)
        else:
            out = self._shallow(sample, timestep, encoder_hidden_states, kept, cross_attention_kwargs)
        self._calls += 1
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)
