"""Tiny random-weight Stable Diffusion pieces for tests and offline demos.

The model hub is unreachable here, so tests and the demo build a small SD
v1.x-shaped pipeline from configs (768-d CLIP text encoder, so anchors and
outlier vectors have the real dimension), save it with ``save_pretrained`` and
load it back through the same ``from_pretrained`` path the worker uses.

The tokenizer is a real CLIP byte-level BPE: vocab.json holds the byte-level
base alphabet (each byte alone and with the ``</w>`` end-of-word suffix), the
two special tokens and every requested word as one whole token; merges.txt
holds the merges that build each word, so ``CLIPTokenizer`` maps each word to
exactly one id, just as SD's tokenizer does for common class words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

DEFAULT_WORDS = ("cat", "dog", "ship", "truck", "bird", "fish", "airplane", "horse")
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"
MODEL_MAX_LENGTH = 77

# One pre-tokenizer piece of CLIP's regex: letters only (CLIP lowercases text).
_WORD = re.compile(r"^[^\W\d_]+$")


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _symbols(word: str) -> list[str]:
    """The initial BPE symbols of a word: its byte-level characters, the last one suffixed ``</w>``."""
    byte_map = _bytes_to_unicode()
    chars = [byte_map[b] for b in word.encode("utf-8")]
    chars[-1] = chars[-1] + EOW
    return chars


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Classic BPE: repeatedly merge the lowest-ranked adjacent pair (what CLIPTokenizer does)."""
    symbols = list(symbols)
    while len(symbols) > 1:
        ranked = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        pairs = [(r, i) for r, i in ranked if r is not None]
        if not pairs:
            break
        rank = min(r for r, _ in pairs)
        first, second = next((symbols[i], symbols[i + 1]) for r, i in pairs if r == rank)
        merged, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def clip_bpe_vocab(words: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a CLIP BPE in which each of ``words`` is one token.

    Words are processed in order; each one's remaining segmentation (after the
    merges added so far) is glued left to right by merges appended at the end
    of the list. Appended merges have the lowest priority, so they never change
    a word that is already a single token: every word stays one token.
    """
    base = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in base + [c + EOW for c in base]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _apply_bpe(_symbols(word), ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1]] + pieces[2:]
    for special in (BOS, EOS):
        vocab[special] = len(vocab)
    return vocab, merges


def _check_words(words: Sequence[str]) -> list[str]:
    words = [str(w) for w in words]
    if not words:
        raise ValueError("words: give at least one word")
    for w in words:
        if not _WORD.match(w) or w != w.lower():
            raise ValueError(
                f"words: {w!r} is not one lowercase alphabetic word (CLIP would split it into several pieces)"
            )
    return list(dict.fromkeys(words))


def write_clip_tokenizer(path: str | Path, words: Sequence[str]) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe_vocab(_check_words(words))
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (path / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        **special,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return path


def tiny_text_encoder_config(vocab_size: int, bos_token_id: int, eos_token_id: int, hidden_size: int = 768):
    """A CLIPTextConfig with SD's width (``hidden_size``) but one layer and a thin MLP: fast on CPU."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=hidden_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


def write_tiny_clip_text(
    path: str | Path, words: list[str], hidden_size: int = 768, seed: int = 0, row_norm: float = 0.4
) -> Path:
    """Write ``path/tokenizer`` and ``path/text_encoder`` (random CLIPTextModel) where each word is one token.

    Token rows are drawn with norms of about ``row_norm`` (SD v1.x rows lie at 0.34-0.42).
    """
    import torch
    from torch import nn
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    tok_dir = write_clip_tokenizer(path / "tokenizer", words)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    config = tiny_text_encoder_config(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, hidden_size=hidden_size
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
        # SD v1.x token rows have norms of about 0.4; keep the random table in that range.
        with torch.no_grad():
            embeddings = model.get_input_embeddings()
            assert isinstance(embeddings, nn.Embedding)  # CLIP's token embedding
            embeddings.weight.normal_(0.0, row_norm / hidden_size**0.5)
    model.save_pretrained(path / "text_encoder")
    return path


# PNDM as SD v1.4 ships it (scheduler/scheduler_config.json).
SD14_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}


def tiny_unet(cross_attention_dim: int = 768):
    """UNet2DConditionModel with SD's interface (4 latent channels, 768-d cross-attention), few channels."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def tiny_vae():
    """AutoencoderKL with four blocks, so the latent is 1/8 of the image as in SD, and few channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def make_tiny_pipeline(path: str | Path, words: list[str] | None = None, seed: int = 0) -> Path:
    """Write a whole tiny random-weight StableDiffusionPipeline folder loadable by ``from_pretrained``.

    Default output is 64x64 pixels (8x8 latents). No safety checker, no
    feature extractor, PNDM scheduled as in SD v1.4.
    """
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    words = list(words) if words is not None else list(DEFAULT_WORDS)
    write_tiny_clip_text(path, words, seed=seed)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_unet(text_encoder.config.hidden_size)
        vae = tiny_vae()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD14_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)  # type: ignore[attr-defined]  # diffusers' __init__ types the name as its dummy class
    return path
