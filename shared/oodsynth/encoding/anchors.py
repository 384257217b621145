"""Class anchors T(y): the CLIP text encoder's token-embedding rows of the class words.

Anchors are what the image encoder is aligned to and what outlier vectors are
rescaled to before decoding, so they must be the very rows Stable Diffusion's
text encoder uses. Multi-token class names ("aquarium fish") get the mean of
their tokens' rows by default; ``multi_token="error"`` refuses them instead,
for callers that pick one prompt word per class themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MULTI_TOKEN_MODES = ("mean", "error")
_EMBEDDING_KEY_SUFFIX = "embeddings.token_embedding.weight"


def _subfolder(model_dir: Path, name: str) -> Path:
    """``model_dir/name`` for a whole SD pipeline folder, else ``model_dir`` itself."""
    return model_dir / name if (model_dir / name).is_dir() else model_dir


def _token_embedding_table(encoder_dir: Path) -> np.ndarray:
    """The (vocab, D) token-embedding table, read from safetensors without building the model when possible."""
    files = sorted(encoder_dir.glob("*.safetensors"))
    index = encoder_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [encoder_dir / f for k, f in weight_map.items() if k.endswith(_EMBEDDING_KEY_SUFFIX)]
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if key.endswith(_EMBEDDING_KEY_SUFFIX):
                        return handle.get_tensor(key).float().numpy()
    from torch import nn
    from transformers import CLIPTextModel  # .bin checkpoints: build the model once

    model = CLIPTextModel.from_pretrained(encoder_dir)
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, nn.Embedding)  # CLIP's token embedding
    return embeddings.weight.detach().float().numpy()


def extract_anchors(model_dir: str | Path, words: list[str], multi_token: str = "mean") -> np.ndarray:
    """(C, D) float32 anchors for ``words`` from a CLIP tokenizer + text encoder folder.

    Reads ``model_dir/tokenizer`` and ``model_dir/text_encoder`` when they exist
    (an SD pipeline folder), else ``model_dir`` itself. A word that is one token
    takes its row; a multi-token word takes the mean of its rows
    (``multi_token="mean"``) or raises naming the word (``"error"``).
    """
    if multi_token not in MULTI_TOKEN_MODES:
        raise ValueError(f"multi_token: expected one of {MULTI_TOKEN_MODES}, got {multi_token!r}")
    words = [str(w) for w in words]
    if not words:
        raise ValueError("words: give at least one class word")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model_dir: {model_dir} is not a folder")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(_subfolder(model_dir, "tokenizer")))
    table = _token_embedding_table(_subfolder(model_dir, "text_encoder"))
    anchors = np.empty((len(words), table.shape[1]), dtype=np.float32)
    for i, word in enumerate(words):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"words: {word!r} tokenizes to nothing")
        if len(ids) > 1 and multi_token == "error":
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(f"words: {word!r} is {len(ids)} tokens {pieces}; pick a single prompt word for it")
        if max(ids) >= table.shape[0]:
            raise ValueError(
                f"words: {word!r} has token id {max(ids)} beyond the embedding table ({table.shape[0]} rows)"
            )
        anchors[i] = table[ids].mean(axis=0)
    return anchors


def load_anchors(path: str | Path) -> np.ndarray:
    """(C, D) float32 anchors from a ``.npy`` array or from the ``anchors`` field of a feature-bank ``.npz``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"anchors: {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"anchors: {path} is not a readable .npy or .npz file ({exc})") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "anchors" not in loaded.files:
                raise ValueError(f"anchors: {path} has no 'anchors' array (it has {sorted(loaded.files)})")
            anchors = loaded["anchors"]
    else:
        anchors = loaded
    if anchors.ndim != 2 or anchors.shape[0] == 0 or anchors.shape[1] == 0:
        raise ValueError(f"anchors: expected a non-empty 2-D array (C, D), got shape {anchors.shape}")
    if not np.issubdtype(anchors.dtype, np.floating) or not np.isfinite(anchors).all():
        raise ValueError("anchors: expected finite floating-point values")
    if (np.linalg.norm(anchors, axis=1) == 0).any():
        raise ValueError("anchors: an anchor has zero norm")
    return anchors.astype(np.float32)


def random_anchors(n_classes: int, dim: int, *, norm: float = 0.38, seed: int = 0) -> np.ndarray:
    """Random directions with SD-like token-embedding norms (~0.38); a stand-in when no text encoder is at hand."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_classes, dim)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True) * norm
