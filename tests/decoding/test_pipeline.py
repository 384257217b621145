"""Placeholder-token decoding on a tiny random-weight SD pipeline (real diffusers code path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodsynth.decoding.pipeline import OutlierDecoder

SIZE = dict(height=64, width=64, output_size=32, steps=2)  # 8x8 latents


@pytest.fixture(scope="module")
def decoder(tiny_sd):
    return OutlierDecoder(tiny_sd, device="cpu", n_slots=4)


def _vectors(n: int, seed: int = 0, norm: float = 0.4) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 768)).astype(np.float32)
    return v * (norm / np.linalg.norm(v, axis=1, keepdims=True))


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(im.convert("RGB"), dtype=np.int16) for im in images]


def test_substitution_matches_diffusers_textual_inversion(tiny_sd, decoder):
    """Our slot rows give the same prompt embeddings as diffusers' own load_textual_inversion path."""
    from diffusers import StableDiffusionPipeline

    vectors = _vectors(3, seed=1)
    ours, ours_neg = decoder.prompt_embeds(vectors, "A high-quality image of the {token}", guidance_scale=7.5)

    fresh = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    tokens = ["<ti-a>", "<ti-b>", "<ti-c>"]
    fresh.load_textual_inversion(pretrained_model_name_or_path=torch.from_numpy(vectors), token=tokens)
    ref, ref_neg = fresh.encode_prompt(
        [f"A high-quality image of the {t}" for t in tokens], "cpu", 1, do_classifier_free_guidance=True
    )
    assert ours.shape == ref.shape == (3, 77, 768)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_neg, ref_neg, rtol=1e-5, atol=1e-5)
    # The comparison has teeth: a different vector gives different embeddings.
    other, _ = decoder.prompt_embeds(_vectors(3, seed=2), guidance_scale=7.5)
    assert (other - ref).abs().max() > 1e-3


def test_a_batch_writes_one_row_per_image_and_never_resizes(decoder):
    table = decoder.pipe.text_encoder.get_input_embeddings().weight
    rows_before = table.shape[0]
    others_before = table[: int(decoder.slot_ids.min())].clone()
    vectors = _vectors(3, seed=3)
    tokens = decoder.write_slots(vectors)
    assert tokens == ["<oodsynth-0>", "<oodsynth-1>", "<oodsynth-2>"]
    written = table[decoder.slot_ids[:3]].detach().numpy()
    np.testing.assert_allclose(written, vectors, rtol=0, atol=0)
    assert len({row.tobytes() for row in written}) == 3
    decoder.write_slots(_vectors(2, seed=4))
    assert table.shape[0] == rows_before
    assert torch.equal(table[: int(decoder.slot_ids.min())], others_before)  # real token rows untouched
    # Each slot token is one id in the prompt, so prompt i reads row i.
    ids = decoder.pipe.tokenizer("the <oodsynth-2>", add_special_tokens=False).input_ids
    assert ids[-1] == int(decoder.slot_ids[2])


def test_same_seed_same_pixels_and_batch_independence(decoder):
    vectors = _vectors(3, seed=5)
    first = _pixels(decoder.decode(vectors, [11, 12, 13], **SIZE))
    again = _pixels(decoder.decode(vectors, [11, 12, 13], **SIZE))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    alone = _pixels(decoder.decode(vectors[1:2], [12], **SIZE))
    assert np.abs(alone[0] - first[1]).max() <= 2  # per-image generator: same noise in any batch
    assert first[0].shape == (32, 32, 3)


def test_each_image_gets_its_own_vector(decoder):
    """Same seed for all three images: any difference comes from the vectors alone."""
    vectors = _vectors(3, seed=6)  # anchor-like norms (0.4): random weights respond weakly, but surely
    images = _pixels(decoder.decode(vectors, [7, 7, 7], **SIZE))
    diffs = [np.abs(images[i] - images[j]).mean() for i, j in ((0, 1), (0, 2), (1, 2))]
    same = _pixels(decoder.decode(np.repeat(vectors[:1], 2, axis=0), [7, 7], **SIZE))
    same_diff = np.abs(same[0] - same[1]).mean()
    assert same_diff < 0.05 and min(diffs) > 0.2, (same_diff, diffs)


def test_more_images_than_slots_and_progress(decoder):
    calls = []
    images = decoder.decode(_vectors(5, seed=8), list(range(5)), progress=lambda d, t: calls.append((d, t)), **SIZE)
    assert len(images) == 5
    assert calls == [(4, 5), (5, 5)]


def test_fast_options_keep_the_pixels(tiny_sd, decoder):
    """Fused q/k/v and channels-last (the CUDA options) change speed, not the images."""
    fast = OutlierDecoder(tiny_sd, device="cpu", n_slots=2, fuse_qkv=True, channels_last=True)
    vectors = _vectors(2, seed=10)
    a = _pixels(decoder.decode(vectors, [1, 2], **SIZE))
    b = _pixels(fast.decode(vectors, [1, 2], **SIZE))
    assert all(np.abs(x - y).max() <= 2 for x, y in zip(a, b))


@pytest.mark.parametrize(
    ("scheduler", "cls"),
    [
        ("ddim", "DDIMScheduler"),
        ("dpm++", "DPMSolverMultistepScheduler"),
        ("euler_a", "EulerAncestralDiscreteScheduler"),
    ],
)
def test_schedulers_by_name(decoder, scheduler, cls):
    first = _pixels(decoder.decode(_vectors(1, seed=9), [3], scheduler=scheduler, **SIZE))
    assert type(decoder.pipe.scheduler).__name__ == cls
    again = _pixels(decoder.decode(_vectors(1, seed=9), [3], scheduler=scheduler, **SIZE))
    assert np.array_equal(first[0], again[0])  # also the stochastic (ancestral) one, via per-image generators


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(height=60), "height"),
        (dict(width=100), "width"),
        (dict(vectors=np.zeros((1, 512), np.float32)), "vectors"),
        (dict(vectors=np.full((1, 768), np.nan, np.float32)), "vectors"),
        (dict(seeds=[1, 2]), "seeds"),
        (dict(scheduler="lms"), "scheduler"),
        (dict(prompt_template="{token} and {token}"), "prompt_template"),
        (dict(prompt_template="a photo"), "prompt_template"),
        (dict(steps=0), "steps"),
    ],
)
def test_bad_input_names_the_field(decoder, kwargs, field):
    args = dict(vectors=_vectors(1), seeds=[0], **SIZE)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        decoder.decode(**args)
