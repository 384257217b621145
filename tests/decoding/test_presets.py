"""Decode presets: exact is today's path; fast = DPM-Solver++ at half the steps + deep-feature reuse.

The reuse (oodsynth.decoding.deep_cache) is checked against the UNet itself: a full
step is the UNet's own output to the bit, and a shallow step fed the feature
kept at the same input is too, so the skip wiring is exactly diffusers'.
"""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from oodsynth.decoding.deep_cache import DeepCacheUNet
from oodsynth.decoding.pipeline import OutlierDecoder
from oodsynth.decoding.presets import PRESETS
from oodsynth.queue.payloads import DecodeJob, DecodeSettings, build_items
from oodsynth.store.results import ResultStore
from oodsynth.worker.decode_job import DecoderCache, run_decode_job

SIZE = dict(height=64, width=64, output_size=32)  # 8x8 latents


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 768)).astype(np.float32)
    return v * (0.38 / np.linalg.norm(v, axis=1, keepdims=True))


@pytest.fixture(scope="module")
def decoder(tiny_sd):
    return OutlierDecoder(tiny_sd, device="cpu", n_slots=2)


@pytest.fixture(scope="module")
def sd_layout_unet():
    """SD v1.x's block layout (two layers per block, cross-attention down/up, a plain deepest block), tiny widths."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()


@pytest.mark.parametrize("branch", [0, 1])
@pytest.mark.parametrize("size", [8, 10])  # 10: not a multiple of 4, diffusers' forward_upsample_size path
@torch.no_grad()
def test_full_and_shallow_steps_are_the_unets_own_output(sd_layout_unet, branch, size):
    unet = sd_layout_unet
    x, t, ehs = torch.randn(2, 4, size, size), torch.tensor(321), torch.randn(2, 5, 32)
    ref = unet(x, t, encoder_hidden_states=ehs).sample
    cached = DeepCacheUNet(unet, interval=3, branch=branch)
    out, kept = cached.full_step(x, t, ehs)
    assert torch.equal(out, ref)
    # branch b: the kept feature enters the last up block's layer that consumes down block 0's layer b
    assert kept.shape[1] == (32 if branch == 0 else 64) and cached.enter == 1 - branch
    assert torch.equal(cached.shallow_step(x, t, ehs, kept), ref)
    # ... and a shallow step really reuses it: fed another step's feature, the output moves
    _, other = cached.full_step(torch.randn_like(x), torch.tensor(500), ehs)
    assert (cached.shallow_step(x, t, ehs, other) - ref).abs().max() > 1e-3


@torch.no_grad()
def test_reuse_schedule_one_full_step_every_interval(sd_layout_unet):
    unet = sd_layout_unet
    cached = DeepCacheUNet(unet, interval=3)
    ehs = torch.randn(2, 5, 32)
    xs = [torch.randn(2, 4, 8, 8) for _ in range(7)]
    exact = [
        torch.equal(
            cached(x, torch.tensor(900 - 100 * i), ehs, return_dict=False)[0],
            unet(x, torch.tensor(900 - 100 * i), encoder_hidden_states=ehs).sample,
        )
        for i, x in enumerate(xs)
    ]
    assert exact == [True, False, False, True, False, False, True]
    cached.reset()  # a new denoising loop starts with a full step
    assert torch.equal(
        cached(xs[1], torch.tensor(5), ehs).sample, unet(xs[1], torch.tensor(5), encoder_hidden_states=ehs).sample
    )
    assert cached.config is unet.config and cached.dtype == unet.dtype  # what the pipeline reads passes through


def test_bad_reuse_parameters_are_refused(sd_layout_unet):
    with pytest.raises(ValueError, match="cache_interval"):
        DeepCacheUNet(sd_layout_unet, interval=0)
    with pytest.raises(ValueError, match="cache_branch"):
        DeepCacheUNet(sd_layout_unet, branch=2)


def test_fast_preset_plan_latents_and_determinism(decoder):
    unet = decoder.pipe.unet
    assert decoder.plan("fast", 50, "pndm") == {
        "preset": "fast",
        "scheduler": "dpm++",
        "steps": 25,
        "cache_interval": 2,
    }
    assert decoder.plan("exact", 50, "pndm") == {
        "preset": "exact",
        "scheduler": "pndm",
        "steps": 50,
        "cache_interval": 1,
    }
    v, seeds = _vectors(2, seed=1), [3, 4]
    exact = torch.stack(decoder.decode(v, seeds, steps=8, output_type="latent", **SIZE))
    default = torch.stack(decoder.decode(v, seeds, steps=8, output_type="latent", preset="exact", **SIZE))
    assert torch.equal(exact, default)
    fast = torch.stack(decoder.decode(v, seeds, steps=8, output_type="latent", preset="fast", **SIZE))
    assert type(decoder.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert decoder.pipe.unet is unet  # the stand-in is gone after the call
    assert exact.shape == fast.shape == (2, 4, 8, 8)
    rel = float((fast - exact).norm() / exact.norm())
    assert 1e-3 < rel < 0.6, rel  # another solver and reuse: close to exact, not equal
    again = torch.stack(decoder.decode(v, seeds, steps=8, output_type="latent", preset="fast", **SIZE))
    assert torch.equal(fast, again)
    alone = decoder.decode(v[1:], seeds[1:], steps=8, output_type="latent", preset="fast", **SIZE)[0]
    torch.testing.assert_close(alone, fast[1], rtol=1e-4, atol=1e-4)  # batch-independent like exact


def test_decode_size_smaller_than_default(decoder):
    """Decode 32² and store 32² (no resize) or decode 64² and store 32²: the stored size is what was asked."""
    v = _vectors(1, seed=2)
    small = decoder.decode(v, [1], steps=2, height=32, width=32, output_size=32)[0]
    large = decoder.decode(v, [1], steps=2, height=64, width=64, output_size=32)[0]
    assert small.size == large.size == (32, 32)
    assert np.abs(np.asarray(small, dtype=np.int16) - np.asarray(large, dtype=np.int16)).mean() > 1  # other pixels


def test_preset_in_settings_ids_and_refusals():
    assert DecodeSettings().preset == "exact" and set(PRESETS) == {"exact", "fast"}
    # exact stays out of the id recipe: ids of jobs made before presets existed are unchanged
    assert "preset" not in DecodeSettings().decode_settings()
    assert DecodeSettings(preset="fast").decode_settings()["preset"] == "fast"
    ids = {
        p: build_items(
            dataset="d",
            vectors=_vectors(1),
            class_index=np.array([0]),
            class_names=["cat"],
            vector_ids=["v0"],
            sampler="s",
            decode=DecodeSettings(preset=p).decode_settings(),
        )[0].image_id
        for p in PRESETS
    }
    assert ids["exact"] != ids["fast"]
    with pytest.raises(pydantic.ValidationError, match="preset"):
        DecodeSettings(preset="turbo")


def test_api_and_cli_refuse_an_unknown_preset_by_name(redis_url, settings_env):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from oodsynth.cli import app
    from services.embed_sampler.app import create_app

    settings_env(MODEL="tiny-test-model")
    with TestClient(create_app()) as client:
        r = client.post("/generate", json={"sample_id": "s", "dataset": "out", "preset": "turbo"})
    assert r.status_code == 422, r.text
    assert any(e["loc"][-1] == "preset" and "turbo" in e["msg"] for e in r.json()["detail"]), r.json()
    result = CliRunner().invoke(app, ["generate", "s", "--dataset", "out", "--preset", "turbo"])
    assert result.exit_code == 2 and "preset" in result.output and "turbo" in result.output, result.output


def test_manifest_rows_name_their_preset(tiny_sd, settings_env, tmp_path):
    settings = settings_env(MODEL=tiny_sd, GPU_BATCH_SIZE=2, DEVICE="cpu")
    for preset in ("exact", "fast"):
        decode = DecodeSettings(steps=4, preset=preset, **SIZE)
        items = build_items(
            dataset="p",
            vectors=_vectors(2),
            class_index=np.array([0, 1]),
            class_names=["cat", "ship"],
            vector_ids=["a", "b"],
            sampler="s",
            decode=decode.decode_settings(),
            model=str(tiny_sd),
        )
        job = DecodeJob(dataset="p", model=str(tiny_sd), items=items, **decode.decode_settings())
        assert run_decode_job(job.model_dump(), settings, DecoderCache())["written"] == 2
    rows = ResultStore(settings.store).records("p")
    by_preset = {p: [r.decode for r in rows if r.decode["preset"] == p] for p in PRESETS}
    assert [len(v) for v in by_preset.values()] == [2, 2]
    assert by_preset["fast"][0] == {
        "preset": "fast",
        "scheduler": "dpm++",
        "steps": 2,
        "cache_interval": 2,
        "guidance_scale": 7.5,
        "height": 64,
        "width": 64,
        "output_size": 32,
    }
    assert by_preset["exact"][0]["scheduler"] == "pndm" and by_preset["exact"][0]["steps"] == 4


@pytest.mark.slow  # torch.compile
def test_compiled_steps_serve_both_presets_and_every_schedule(decoder, monkeypatch):
    """With compilation on, exact (full steps only) and fast (full + shallow) run on one compiled pair of step
    functions: the step counter and the interval stay outside them, so another preset and another schedule reuse
    the first two graphs. Dynamo's own tracing with the eager backend (no C++ toolchain needed); inductor compiles
    the same graphs on CUDA."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    v, seeds = _vectors(2, seed=7), [5, 6]
    latent = dict(output_type="latent", **SIZE)
    eager = {p: torch.stack(decoder.decode(v, seeds, steps=8, preset=p, **latent)) for p in PRESETS}
    compiled = DeepCacheUNet(decoder.pipe.unet, interval=1)
    compiled.compile_steps(backend="eager")
    monkeypatch.setitem(decoder._step_unets, 0, compiled)
    monkeypatch.setattr(decoder, "_steps_compiled", True)
    torch._dynamo.reset()
    counters.clear()
    first = {p: torch.stack(decoder.decode(v, seeds, steps=8, preset=p, **latent)) for p in PRESETS}
    assert counters["stats"]["unique_graphs"] == 2  # full_step and shallow_step, nothing else
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = {p: torch.stack(decoder.decode(v, seeds, steps=6, preset=p, **latent)) for p in PRESETS}
    assert counters["stats"]["unique_graphs"] == 2
    for p in PRESETS:  # exact on the compiled full step is exact on the UNet itself
        torch.testing.assert_close(first[p], eager[p], rtol=1e-5, atol=1e-5)
        assert again[p].shape == first[p].shape
