"""Images per second: the worker's decode path vs plain diffusers, same vectors, same run.

Worker path: ``oodsynth.decoding.OutlierDecoder`` (placeholder slots added
once, one vector and one seeded generator per image, prompt embeddings passed
to the pipeline; on CUDA fp16 + SDPA + fused QKV + ``torch.compile``, as the
worker runs by default; ``--no-worker-speedups`` measures the plain path).

Baseline: a plain ``StableDiffusionPipeline.from_pretrained`` in the same
dtype, with the same vectors loaded through diffusers' own
``load_textual_inversion`` (one token per vector, loaded once before timing)
and called with ``prompt=[...]`` and one generator per image.

Both decode the same work: B images at HxW, the same steps, CFG and
scheduler, then resize to ``--output-size``. The model is an SD v1.x
architecture with random weights built from configs (no hub access):
``--arch sd14`` inlines SD v1.4's UNet / VAE / CLIP ViT-L text-encoder
configs; ``--arch tiny`` uses ``make_tiny_pipeline``; ``--model`` benches an
existing pipeline folder instead. Random weights change no shapes and no FLOPs,
so the timings are those of the real model.

    python bench/decode.py --arch tiny --steps 2 --batch-sizes 1 2 --height 64 --width 64   # CPU smoke
    python bench/decode.py --arch sd14 --out decode.json                                    # GPU: 512^2, 50 steps, B=1,8,32
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from oodsynth.decoding import DEFAULT_PROMPT_TEMPLATE, OutlierDecoder, default_device, default_dtype
from oodsynth.tiny_model import SD14_SCHEDULER_CONFIG, make_tiny_pipeline, write_clip_tokenizer

# SD v1.4 component configs (CompVis/stable-diffusion-v1-4 unet/, vae/, text_encoder/ config.json).
SD14_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD14_VAE = dict(
    act_fn="silu",
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
)
# openai/clip-vit-large-patch14 text tower (SD v1.x's text encoder). vocab_size is set
# to the offline tokenizer's size: the table's row count does not change the work.
CLIP_L_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)
CLASS_WORDS = ["cat", "dog", "ship", "truck", "bird", "fish", "airplane", "horse"]


def build_sd14(path: Path, dtype: torch.dtype) -> Path:
    """Write an SD v1.4-architecture pipeline with random weights to ``path``."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    write_clip_tokenizer(path / "tokenizer", CLASS_WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        **CLIP_L_TEXT,
    )
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD14_VAE),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD14_UNET),
        scheduler=PNDMScheduler.from_config(SD14_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.to(dtype)
    pipe.save_pretrained(path)
    return path


def anchor_like_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random directions at SD's class-anchor norm (~0.38), as the samplers hand them over."""
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v * (0.38 / np.linalg.norm(v, axis=1, keepdims=True))


class Baseline:
    """Plain diffusers: textual-inversion tokens for the vectors, ``pipe(prompt=[...])``."""

    def __init__(self, model: Path | str, device: str, dtype: torch.dtype, vectors: np.ndarray):
        from diffusers import StableDiffusionPipeline

        self.pipe = StableDiffusionPipeline.from_pretrained(
            str(model), dtype=dtype, safety_checker=None, requires_safety_checker=False
        ).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.tokens = [f"<bench-{i}>" for i in range(len(vectors))]
        self.pipe.load_textual_inversion(pretrained_model_name_or_path=torch.from_numpy(vectors), token=self.tokens)

    def decode(self, n: int, seeds, *, prompt_template, steps, guidance_scale, height, width, output_size):
        from PIL import Image

        prompts = [prompt_template.replace("{token}", t) for t in self.tokens[:n]]
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        images = self.pipe(
            prompt=prompts,
            generator=generators,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
        ).images
        size = (output_size, output_size)
        return [im.resize(size, Image.Resampling.LANCZOS) for im in images]


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def _reset_peak(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def time_call(fn, device: str, repeats: int) -> tuple[float, float | None]:
    """Mean seconds per call over ``repeats`` timed calls, and the peak GPU memory."""
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.mean(times)), _peak_gib(device)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=["sd14", "tiny"], default="sd14")
    p.add_argument("--model", help="bench this pipeline folder / hub id instead of building one")
    p.add_argument("--workdir", type=Path, help="where to write the built pipeline (default: a temp dir)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--height", type=int, default=None, help="default 512 (128 for --arch tiny, a CPU smoke run)")
    p.add_argument("--width", type=int, default=None, help="default 512 (128 for --arch tiny)")
    p.add_argument("--output-size", type=int, default=256)
    p.add_argument("--scheduler", default="pndm")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per batch size and path")
    p.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed warm-up call (0: none)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--fp32", action="store_true", help="fp32 on CUDA too (default fp16 on CUDA)")
    p.add_argument(
        "--worker-speedups",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="worker path: fused q/k/v + torch.compile, as the worker runs on CUDA (default: on for CUDA)",
    )
    p.add_argument("--channels-last", action="store_true", help="worker path: channels-last (measured slower)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark (both paths)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    for field in ("height", "width"):
        if getattr(args, field) is None:
            setattr(args, field, 128 if args.arch == "tiny" and not args.model else 512)
        if getattr(args, field) % 8:
            p.error(f"--{field}: must be a multiple of 8")
    if min(args.batch_sizes) < 1 or args.steps < 1 or args.repeats < 1:
        p.error("--batch-sizes, --steps and --repeats must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = args.device or default_device()
    dtype = torch.float32 if args.fp32 else default_dtype(device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="oodsynth-bench-"))
    if args.model:
        model = args.model
    elif args.arch == "tiny":
        model = make_tiny_pipeline(workdir / "tiny")
    else:
        print(f"building an SD v1.4-architecture pipeline with random weights in {workdir} ...", file=sys.stderr)
        model = build_sd14(workdir / "sd14", dtype)

    n_max = max(args.batch_sizes)
    speedups = args.worker_speedups if args.worker_speedups is not None else torch.device(device).type == "cuda"
    load_start = time.perf_counter()
    worker = OutlierDecoder(
        model,
        device=device,
        dtype=dtype,
        n_slots=n_max,
        channels_last=args.channels_last,
        fuse_qkv=speedups,
        compile_unet=speedups,
    )
    vectors = anchor_like_vectors(n_max, worker.hidden_size)
    baseline = Baseline(model, device, dtype, vectors)
    load_s = time.perf_counter() - load_start
    settings = dict(
        prompt_template=DEFAULT_PROMPT_TEMPLATE,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        height=args.height,
        width=args.width,
        output_size=args.output_size,
    )
    if args.scheduler != "pndm":
        baseline.pipe.scheduler = worker._scheduler(args.scheduler).__class__.from_config(baseline.pipe.scheduler.config)

    def run_worker(n, steps):
        return worker.decode(vectors[:n], list(range(n)), **dict(settings, steps=steps), scheduler=args.scheduler)

    def run_baseline(n, steps):
        return baseline.decode(n, list(range(n)), **dict(settings, steps=steps))

    rows = []
    for n in tqdm(args.batch_sizes, desc="batch sizes", file=sys.stderr):
        row = dict(batch_size=n)
        for name, fn in (("worker", run_worker), ("diffusers", run_baseline)):
            if args.warmup_steps:
                fn(n, args.warmup_steps)
            seconds, peak = time_call(lambda: fn(n, args.steps), device, args.repeats)
            row[f"{name}_s_per_batch"] = seconds
            row[f"{name}_images_per_s"] = n / seconds
            row[f"{name}_peak_gib"] = peak
        row["speedup"] = row["worker_images_per_s"] / row["diffusers_images_per_s"]
        rows.append(row)

    env = dict(
        device=torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__,
        python=platform.python_version(),
        cpu_threads=torch.get_num_threads(),
    )
    import diffusers
    import transformers

    env.update(diffusers=diffusers.__version__, transformers=transformers.__version__)
    report = dict(
        arch=args.model or args.arch,
        dtype=str(dtype).removeprefix("torch."),
        device_kind=torch.device(device).type,
        scheduler=args.scheduler,
        worker_options=dict(
            sdpa=True,
            channels_last=args.channels_last,
            fuse_qkv=speedups,
            compile=speedups,
            cudnn_benchmark=args.cudnn_benchmark,
        ),
        settings={k: v for k, v in settings.items() if k != "prompt_template"},
        repeats=args.repeats,
        load_s=load_s,
        environment=env,
        rows=rows,
    )
    print_table(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return report


def print_table(report: dict) -> None:
    s = report["settings"]
    print(
        f"\ndecode benchmark: {report['arch']} on {report['environment']['device']} ({report['device_kind']}, "
        f"{report['dtype']}), {s['height']}x{s['width']}, {s['steps']} steps, CFG {s['guidance_scale']}, "
        f"{report['scheduler']}, worker options {report['worker_options']}"
    )
    head = f"{'batch':>5}  {'worker img/s':>12}  {'diffusers img/s':>15}  {'speedup':>7}  {'worker GiB':>10}  {'diffusers GiB':>13}"
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        wg = "-" if r["worker_peak_gib"] is None else f"{r['worker_peak_gib']:.2f}"
        dg = "-" if r["diffusers_peak_gib"] is None else f"{r['diffusers_peak_gib']:.2f}"
        print(
            f"{r['batch_size']:>5}  {r['worker_images_per_s']:>12.3f}  {r['diffusers_images_per_s']:>15.3f}  "
            f"{r['speedup']:>7.2f}  {wg:>10}  {dg:>13}"
        )


if __name__ == "__main__":
    main()
