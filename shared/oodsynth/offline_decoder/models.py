"""The parts of the trained offline decoder: a small pipeline with Stable Diffusion's interface.

The worker decodes by writing a vector into a placeholder token's row of the
CLIP token table and running ``StableDiffusionPipeline`` on "A high-quality
image of the <placeholder>". The offline decoder keeps that interface exactly
and only shrinks the parts:

- text encoder: a random, fixed one-layer ``CLIPTextModel`` with 768-d token
  rows (``tiny_model.write_tiny_clip_text``); its class-word rows are the anchors.
- VAE: an ``AutoencoderKL`` with ONE block, so it does not downsample
  (``vae_scale_factor`` 1: latents are 4 x H x W). It is trained briefly as an
  autoencoder, so the pipeline's ``vae.decode`` is a real learned map from
  latents to pixels, and its ``scaling_factor`` is set from the latents' std as
  SD's is.
- UNet: a small ``UNet2DConditionModel`` that takes the text encoder's 768-d
  hidden states; a ``text_proj`` input layer (diffusers' ``encoder_hid_proj``)
  maps them to a narrow cross-attention width once instead of in every block,
  which measured 0.38 s vs 0.49 s per 64-image training step on 2 CPU cores.
- scheduler: DDIM with the cosine (``squaredcos_cap_v2``) noise schedule, which
  suits small images in few steps, and v-prediction: the cosine schedule ends
  at signal ~0 (alpha_bar 2e-9), where an epsilon model's x0 estimate divides
  by sqrt(alpha_bar) and blew up into coloured noise (measured); v-prediction
  never divides. The worker's other schedulers read the same betas and
  prediction type from it.

``PromptConditioner`` computes the hidden states for "the prompt with vector v
in the class word's place" the way the worker does, so the UNet is trained on
exactly what it will be given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..decoding.pipeline import DEFAULT_PROMPT_TEMPLATE, TOKEN_FIELD

TEXT_DIM = 768
# The template's words get one token each, as in SD's real vocabulary.
TEMPLATE_WORDS = ("a", "high", "quality", "image", "of", "the")

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}


def decoder_vae(channels: int = 32, latent_channels: int = 4, image_size: int = 16):
    """AutoencoderKL with one encoder/decoder block (no downsampling) and no mid-block attention."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(channels,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=min(16, channels),
        sample_size=image_size,
        mid_block_add_attention=False,
    )


def decoder_unet(
    image_size: int,
    latent_channels: int = 4,
    channels: Sequence[int] = (32, 64),
    cross_attention_dim: int = 64,
    heads: int = 4,
):
    """UNet2DConditionModel taking (B, 77, 768) text states; cross-attention below the top resolution."""
    from diffusers import UNet2DConditionModel

    channels = tuple(int(c) for c in channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1)
    up = tuple("CrossAttnUpBlock2D" if d.startswith("CrossAttn") else "UpBlock2D" for d in reversed(down))
    return UNet2DConditionModel(
        sample_size=image_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim,
        encoder_hid_dim=TEXT_DIM,
        encoder_hid_dim_type="text_proj",
        attention_head_dim=heads,  # diffusers' legacy name: the number of heads
        norm_num_groups=min(16, channels[0]),
        mid_block_type=None,  # measured: the mid block's attention cost 25 % of a step for no visible gain
    )


def decoder_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(SCHEDULER_CONFIG)


class PromptConditioner:
    """Text-encoder hidden states of the prompt with a vector in the class word's place.

    The worker writes vector v into a placeholder token's row and encodes the
    prompt; here the token-embedding output at the class-word position is
    replaced by v (a forward hook), which gives the same numbers without
    adding tokens. ``anchor_states`` encode the class words themselves;
    ``empty_states`` is the pipeline's unconditional prompt "" (used by
    classifier-free guidance).
    """

    def __init__(self, tokenizer, text_encoder, template: str = DEFAULT_PROMPT_TEMPLATE):
        if template.count(TOKEN_FIELD) != 1:
            raise ValueError(f"prompt_template: must contain {TOKEN_FIELD} exactly once, got {template!r}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()
        self.template = template
        # Tokenise with a one-token stand-in to find the slot's position.
        stand_in = TEMPLATE_WORDS[0]
        ids = self._ids([template.replace(TOKEN_FIELD, stand_in)])[0]
        before = self._ids([template.split(TOKEN_FIELD)[0].strip()])[0]
        self.position = int((before != tokenizer.eos_token_id).sum()) if before.numel() else 1
        if int(ids[self.position]) != tokenizer.convert_tokens_to_ids(stand_in + "</w>"):
            raise ValueError(f"prompt_template: could not locate the {TOKEN_FIELD} position in {template!r}")
        self._base_ids = ids

    def _ids(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    @torch.no_grad()
    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """(B, 768) token rows -> (B, 77, 768) hidden states, as ``pipe.encode_prompt`` returns them."""
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        ids = self._base_ids.unsqueeze(0).expand(len(vectors), -1)
        pos = self.position

        def put_vector(_module, _inputs, output):
            output = output.clone()
            output[:, pos] = vectors.to(output.dtype)
            return output

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(put_vector)
        try:
            return self.text_encoder(ids)[0]
        finally:
            handle.remove()

    @torch.no_grad()
    def words_states(self, words: Sequence[str]) -> torch.Tensor:
        """Hidden states of the prompts with the class words themselves, a reference used only by tests."""
        prompts = [self.template.replace(TOKEN_FIELD, w) for w in words]
        return self.text_encoder(self._ids(prompts))[0]

    @torch.no_grad()
    def empty_states(self) -> torch.Tensor:
        return self.text_encoder(self._ids([""]))[0]
