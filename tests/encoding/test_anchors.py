"""Anchors: real SD v1.4 rows load with the right norms; extraction reads the right rows."""

from __future__ import annotations

import numpy as np
import pytest

from oodsynth.bank import FeatureBank
from oodsynth.encoding.anchors import extract_anchors, load_anchors


def test_real_cifar100_anchors_load_with_sd_norms(shared_data):
    anchors = load_anchors(shared_data / "token_embed_cifar100.npy")
    assert anchors.shape == (100, 768) and anchors.dtype == np.float32
    norms = np.linalg.norm(anchors, axis=1)
    assert norms.min() >= 0.33 and norms.max() <= 0.42


def test_load_anchors_from_a_bank_and_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    anchors = rng.standard_normal((3, 8)).astype(np.float32)
    bank = FeatureBank.from_arrays(rng.standard_normal((6, 8)), np.repeat(np.arange(3), 2), anchors)
    bank.save(tmp_path / "bank.npz")
    np.testing.assert_array_equal(load_anchors(tmp_path / "bank.npz"), anchors)

    np.save(tmp_path / "flat.npy", np.ones(5))
    with pytest.raises(ValueError, match="anchors: expected a non-empty 2-D"):
        load_anchors(tmp_path / "flat.npy")
    np.savez(tmp_path / "other.npz", features=np.ones((2, 2)))
    with pytest.raises(ValueError, match="no 'anchors' array"):
        load_anchors(tmp_path / "other.npz")
    bad = np.ones((2, 3), dtype=np.float32)
    bad[1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="anchors: expected finite"):
        load_anchors(tmp_path / "nan.npy")


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    from oodsynth.offline_decoder.tiny_model import write_tiny_clip_text

    path = tmp_path_factory.mktemp("clip")
    write_tiny_clip_text(path, ["cat", "ship", "aquarium", "fish"], hidden_size=32)
    return path


def test_extract_anchors_takes_token_rows_and_means_multi_token_words(tiny_text):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_text / "tokenizer")
    table = CLIPTextModel.from_pretrained(tiny_text / "text_encoder").get_input_embeddings().weight.detach().numpy()
    ids = {w: tokenizer(w, add_special_tokens=False)["input_ids"] for w in ["cat", "ship", "aquarium", "fish"]}
    assert all(len(v) == 1 for v in ids.values())

    anchors = extract_anchors(tiny_text, ["cat", "ship", "aquarium fish"])
    assert anchors.shape == (3, 32) and anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors[0], table[ids["cat"][0]])
    np.testing.assert_array_equal(anchors[1], table[ids["ship"][0]])
    np.testing.assert_allclose(anchors[2], (table[ids["aquarium"][0]] + table[ids["fish"][0]]) / 2, rtol=1e-6)
    assert not np.allclose(anchors[0], anchors[1])
    # the text_encoder folder alone + tokenizer folder layout is also accepted
    np.testing.assert_array_equal(extract_anchors(tiny_text, ["fish"])[0], table[ids["fish"][0]])


def test_extract_anchors_refuses_multi_token_words_on_request(tiny_text):
    with pytest.raises(ValueError, match="'aquarium fish' is 2 tokens"):
        extract_anchors(tiny_text, ["cat", "aquarium fish"], multi_token="error")
    with pytest.raises(ValueError, match="multi_token"):
        extract_anchors(tiny_text, ["cat"], multi_token="first")
    with pytest.raises(ValueError, match="words"):
        extract_anchors(tiny_text, [])
