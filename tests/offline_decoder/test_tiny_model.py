"""The tiny random-weight SD pipeline: a real CLIP tokenizer and a loadable pipeline folder."""

from __future__ import annotations

import json

import pytest

from oodsynth.offline_decoder.tiny_model import clip_bpe_vocab, make_tiny_pipeline, write_tiny_clip_text

# Words chosen so that one is a prefix/suffix of another ("at", "cat", "catalog"):
# a naive merge list would split some of them into several pieces.
WORDS = ["cat", "at", "ca", "catalog", "dog", "fish", "aquarium", "a", "the", "image"]


def test_each_word_is_one_token(tmp_path):
    from transformers import CLIPTokenizer

    write_tiny_clip_text(tmp_path, WORDS)
    tok_dir = tmp_path / "tokenizer"
    assert (tok_dir / "merges.txt").read_text().startswith("#version: 0.2")
    assert json.loads((tok_dir / "tokenizer_config.json").read_text())["model_max_length"] == 77
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    ids = [tokenizer(w, add_special_tokens=False).input_ids for w in WORDS]
    assert all(len(i) == 1 for i in ids), dict(zip(WORDS, ids))
    assert len({i[0] for i in ids}) == len(WORDS)
    # Any other text still tokenises (byte-level alphabet), wrapped in BOS/EOS and padded to 77.
    enc = tokenizer("A high-quality image of the zebra!", padding="max_length", max_length=77)
    assert enc.input_ids[0] == tokenizer.bos_token_id and len(enc.input_ids) == 77
    assert tokenizer.unk_token_id not in enc.input_ids[1 : enc.input_ids.index(tokenizer.eos_token_id)]


def test_text_encoder_is_768_wide(tmp_path):
    from transformers import CLIPTextModel

    write_tiny_clip_text(tmp_path, ["cat", "dog"])
    model = CLIPTextModel.from_pretrained(tmp_path / "text_encoder")
    table = model.get_input_embeddings().weight
    assert table.shape[1] == 768
    vocab, _ = clip_bpe_vocab(["cat", "dog"])
    assert table.shape[0] == len(vocab)
    norms = table.detach().norm(dim=1)
    assert 0.2 < float(norms.mean()) < 0.6  # SD v1.x token rows are ~0.34-0.42


def test_bad_words_are_refused(tmp_path):
    with pytest.raises(ValueError, match="words"):
        write_tiny_clip_text(tmp_path, ["aquarium fish"])
    with pytest.raises(ValueError, match="words"):
        write_tiny_clip_text(tmp_path, [])


def test_tiny_pipeline_loads_and_runs(tmp_path):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    make_tiny_pipeline(tmp_path / "sd", words=["cat", "ship"])
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert pipe.safety_checker is None
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert pipe.text_encoder.config.hidden_size == 768
    assert pipe.unet.config.cross_attention_dim == 768
    assert pipe.vae_scale_factor == 8
    assert len(pipe.tokenizer("ship", add_special_tokens=False).input_ids) == 1
    image = pipe("A high-quality image of the ship", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)


def test_row_norm_sets_the_scale_of_the_token_rows(tmp_path):
    from transformers import CLIPTextModel

    write_tiny_clip_text(tmp_path, ["cat", "dog"], row_norm=0.2)
    norms = CLIPTextModel.from_pretrained(tmp_path / "text_encoder").get_input_embeddings().weight.detach().norm(dim=1)
    assert abs(float(norms.mean()) - 0.2) < 0.02
