"""Images per second: the worker's decode path vs plain diffusers, same vectors, same run.

Worker path: ``oodsynth.decoding.pipeline.OutlierDecoder`` (placeholder slots added
once, one vector and one seeded generator per image, prompt embeddings passed
to the pipeline; on CUDA fp16 + SDPA + fused QKV + ``torch.compile``, as the
worker runs by default; ``--no-worker-speedups`` measures the plain path).

Baseline: a plain ``StableDiffusionPipeline.from_pretrained`` in the same
dtype, with the same vectors loaded through diffusers' own
``load_textual_inversion`` (one token per vector, loaded once before timing)
and called with ``prompt=[...]`` and one generator per image.

Both decode the same work: B images at HxW, the same steps, CFG and
scheduler, then resize to ``--output-size``. Each decode preset (``--presets``;
``fast`` = DPM-Solver++ at half the steps + deep-feature reuse, see
``oodsynth.decoding.presets.PRESETS``) gets its own worker row against the same baseline,
for every decode size (``--sizes``: decode 256² and store 256² against decode
512² and store 256²) and batch size; ``max`` in ``--batch-sizes`` doubles the
batch from 32 until the worker path runs out of GPU memory and keeps the
largest that fits. The JSON is rewritten after every row, so a run cut short
keeps what it measured. The model is an SD v1.x
architecture with random weights built from configs (no hub access):
``--arch sd14`` inlines SD v1.4's UNet / VAE / CLIP ViT-L text-encoder
configs; ``--arch tiny`` uses ``make_tiny_pipeline``; ``--model`` benches an
existing pipeline folder instead. Random weights change no shapes and no FLOPs,
so the timings are those of the real model.

    python bench/decode.py --arch tiny --steps 2 --batch-sizes 1 2 --sizes 64 --threads 1   # CPU smoke
    python bench/decode.py --arch sd14 --batch-sizes 8 32 max --sizes 512 256 --out decode.json   # GPU (bench/decode_gpu.sh)
    python bench/decode.py --flops --sizes 512 256                                                # UNet FLOPs, any CPU
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

from oodsynth.decoding.pipeline import DEFAULT_PROMPT_TEMPLATE, OutlierDecoder, default_device, default_dtype
from oodsynth.decoding.presets import PRESETS
from oodsynth.offline_decoder.tiny_model import SD14_SCHEDULER_CONFIG, make_tiny_pipeline, write_clip_tokenizer

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


MAX_PROBE = 1024  # "max" stops doubling here (and the slots/tokens are sized for it)


def _batch_size(text: str) -> int | str:
    if text == "max":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("batch sizes must be >= 1 (or 'max')")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=["sd14", "tiny"], default="sd14")
    p.add_argument("--model", help="bench this pipeline folder / hub id instead of building one")
    p.add_argument("--workdir", type=Path, help="where to write the built pipeline (default: a temp dir)")
    p.add_argument(
        "--batch-sizes",
        type=_batch_size,
        nargs="+",
        default=[8, 32, "max"],
        help="images per batch; 'max': the largest that fits on the GPU (doubling from 32)",
    )
    p.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    p.add_argument(
        "--max-probe",
        type=int,
        default=MAX_PROBE,
        help=f"'max' stops doubling at this batch (at most {MAX_PROBE}; smaller keeps a lent GPU's time)",
    )
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="square decode sizes, each its own rows (default 512; 128 for --arch tiny)",
    )
    p.add_argument("--output-size", type=int, default=256)
    p.add_argument("--scheduler", default="pndm")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per batch size and path")
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="steps of the untimed warm-up call (0: none; raised per preset until it runs every graph)",
    )
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--fp32", action="store_true", help="fp32 on CUDA too (default fp16 on CUDA)")
    p.add_argument(
        "--worker-speedups",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="worker path: fused q/k/v + torch.compile, as the worker runs on CUDA (default: on for CUDA)",
    )
    p.add_argument("--channels-last", action="store_true", help="worker path: channels-last (measured slower)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark (both paths)")
    p.add_argument("--no-baseline", action="store_true", help="skip plain diffusers (worker rows only, no ratio)")
    p.add_argument(
        "--latent-distance",
        type=int,
        default=0,
        metavar="N",
        help="also decode N images per preset to latents: relative L2 distance to exact (first size)",
    )
    p.add_argument(
        "--flops",
        action="store_true",
        help="only count UNet FLOPs per image for each preset and size (SD v1.4 on the meta device: no "
        "weights, no GPU, seconds on a CPU) and exit",
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [128 if args.arch == "tiny" and not args.model else 512]
    if any(size % 8 or size < 8 for size in args.sizes):
        p.error("--sizes: each must be a positive multiple of 8")
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be >= 1")
    if not 32 <= args.max_probe <= MAX_PROBE:
        p.error(f"--max-probe must lie in [32, {MAX_PROBE}]")
    return args


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def warmup_steps(requested: int, preset: str | None) -> int:
    """Steps of a warm-up call that runs every graph ``preset`` uses: a full and a shallow step for feature reuse
    (``fast`` halves the steps, so 2 requested would run one full step and leave the shallow step's compilation
    to the timed call)."""
    if preset is None:
        return requested
    p, steps = PRESETS[preset], requested
    while p.steps(steps) <= p.cache_interval and p.cache_interval > 1:
        steps += 1
    return steps


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (exact and fast share the full step's graph per shape)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def largest_batch(fn, device: str, start: int = 32, limit: int = MAX_PROBE) -> int | None:
    """Double the batch from ``start`` while ``fn(n)`` fits in GPU memory; the largest that ran (None: not even ``start``)."""
    if torch.device(device).type != "cuda":
        print("'max' probes GPU memory: skipped on CPU", file=sys.stderr)
        return None
    fits, n = None, start
    while n <= limit:
        try:
            with torch.compiler.set_stance("force_eager"):  # probing memory must not compile a graph per size
                fn(n)
        except Exception as exc:  # noqa: BLE001 - only running out of memory ends the probe
            if not _out_of_memory(exc):
                raise
            torch.cuda.empty_cache()
            break
        fits, n = n, 2 * n
    return fits


def environment(device: str) -> dict:
    import diffusers
    import transformers

    return dict(
        device=torch.cuda.get_device_name(device)
        if torch.device(device).type == "cuda"
        else platform.processor() or "cpu",
        torch=torch.__version__,
        python=platform.python_version(),
        cpu_threads=torch.get_num_threads(),
        diffusers=diffusers.__version__,
        transformers=transformers.__version__,
    )


def unet_flops(args) -> dict:
    """UNet FLOPs per image of a whole decode, per preset and size: SD v1.4's UNet on the meta device.

    One full and one shallow step are counted (``torch.utils.flop_counter``,
    CFG: two evaluations per step), times the number of each that the
    preset's scheduler and reuse interval run.
    """
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from torch.utils.flop_counter import FlopCounterMode

    from oodsynth.decoding.deep_cache import DeepCacheUNet
    from oodsynth.decoding.pipeline import _scheduler_class
    from oodsynth.offline_decoder.tiny_model import SD14_SCHEDULER_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD14_UNET)
    unet.set_attn_processor(AttnProcessor2_0())
    out = {}
    for size in args.sizes:
        x = torch.empty(2, 4, size // 8, size // 8, device="meta")
        t, ehs = torch.tensor(500, device="meta"), torch.empty(2, 77, 768, device="meta")
        for name, preset in PRESETS.items():
            cached = DeepCacheUNet(unet, interval=max(preset.cache_interval, 1), branch=preset.cache_branch)
            with FlopCounterMode(display=False) as full:
                _, kept = cached.full_step(x, t, ehs)
            with FlopCounterMode(display=False) as shallow:
                cached.shallow_step(x, t, ehs, kept)
            scheduler = _scheduler_class(preset.scheduler or args.scheduler).from_config(SD14_SCHEDULER_CONFIG)
            scheduler.set_timesteps(preset.steps(args.steps))
            calls = len(scheduler.timesteps)
            n_full = -(-calls // preset.cache_interval)
            total = n_full * full.get_total_flops() + (calls - n_full) * shallow.get_total_flops()
            out[f"{name}@{size}"] = dict(
                preset=name,
                size=size,
                unet_calls=calls,
                full_calls=n_full,
                shallow_share=shallow.get_total_flops() / full.get_total_flops(),
                tflop_per_image=total / 1e12,
            )
        base = out[f"exact@{args.sizes[0]}"]["tflop_per_image"]
        for key in [k for k in out if k.endswith(f"@{size}")]:
            r = out[key]
            r["share_of_exact_at_first_size"] = r["tflop_per_image"] / base
            shallow = (
                f", {r['unet_calls'] - r['full_calls']} shallow at {100 * r['shallow_share']:.1f} % of a full"
                if r["full_calls"] < r["unet_calls"]
                else ""
            )
            print(
                f"{size}² {r['preset']:>5}: {r['unet_calls']} UNet calls ({r['full_calls']} full{shallow}), "
                f"{r['tflop_per_image']:.1f} TFLOP per image, "
                f"{100 * r['share_of_exact_at_first_size']:.1f} % of exact at {args.sizes[0]}²"
            )
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.flops:
        flops = unet_flops(args)
        _write({"unet_flops": flops, "steps": args.steps, "scheduler": args.scheduler}, args.out)
        return flops
    if args.threads:
        torch.set_num_threads(args.threads)
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

    n_max = max(
        [b for b in args.batch_sizes if b != "max"]
        + [args.max_probe] * ("max" in args.batch_sizes)
        + [args.latent_distance]
    )
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
    baseline = None if args.no_baseline else Baseline(model, device, dtype, vectors)
    load_s = time.perf_counter() - load_start
    common = dict(
        prompt_template=DEFAULT_PROMPT_TEMPLATE, guidance_scale=args.guidance_scale, output_size=args.output_size
    )
    if baseline is not None and args.scheduler != "pndm":
        baseline.pipe.scheduler = worker._scheduler(args.scheduler).__class__.from_config(
            baseline.pipe.scheduler.config
        )

    def run_worker(n, steps, size, preset, output_type="pil"):
        return worker.decode(
            vectors[:n],
            list(range(n)),
            steps=steps,
            height=size,
            width=size,
            scheduler=args.scheduler,
            preset=preset,
            output_type=output_type,
            **common,
        )

    def run_baseline(n, steps, size):
        return baseline.decode(n, list(range(n)), steps=steps, height=size, width=size, **common)

    def timed(fn, n, preset=None):
        warmup_start = time.perf_counter()  # a new shape's compilation lands here, untimed
        if args.warmup_steps:
            fn(n, warmup_steps(args.warmup_steps, preset))
        _sync(device)
        warmup_s = time.perf_counter() - warmup_start
        seconds, peak = time_call(lambda: fn(n, args.steps), device, args.repeats)
        return {"s_per_batch": seconds, "images_per_s": n / seconds, "peak_gib": peak, "warmup_s": warmup_s}

    report = dict(
        arch=args.model or args.arch,
        dtype=str(dtype).removeprefix("torch."),
        device_kind=torch.device(device).type,
        scheduler=args.scheduler,
        presets={name: worker.plan(name, args.steps, args.scheduler) for name in args.presets},
        worker_options=dict(
            sdpa=True,
            channels_last=args.channels_last,
            fuse_qkv=speedups,
            compile=speedups,
            cudnn_benchmark=args.cudnn_benchmark,
        ),
        settings=dict(steps=args.steps, guidance_scale=args.guidance_scale, output_size=args.output_size),
        repeats=args.repeats,
        load_s=load_s,
        environment=environment(device),
        rows=[],
    )

    def measure(size, n):
        """One row: plain diffusers, then each preset; the JSON is rewritten after each path (a cut run keeps them)."""
        row = dict(size=size, batch_size=n)
        report["rows"].append(row)
        if baseline is not None:
            try:
                row["diffusers"] = timed(lambda b, steps: run_baseline(b, steps, size), n)
            except Exception as exc:  # noqa: BLE001 - plain diffusers may not fit where the worker does
                if not _out_of_memory(exc):
                    raise
                torch.cuda.empty_cache()
                row["diffusers"] = None
            _write(report, args.out)
            _progress(row, "diffusers")
        for preset in args.presets:
            row[preset] = timed(lambda b, steps, p=preset: run_worker(b, steps, size, p), n, preset)
            if row.get("diffusers"):
                row[preset]["ratio_to_diffusers"] = row[preset]["images_per_s"] / row["diffusers"]["images_per_s"]
            report["compiled_graphs"] = compiled_graphs()
            _write(report, args.out)
            _progress(row, preset)

    # Order by what matters most if the run is cut short: the explicit batch sizes of every decode size (first size
    # first), the latent distance after the first size's rows, then the largest batch that fits.
    for size in args.sizes:
        for n in [b for b in args.batch_sizes if b != "max"]:
            measure(size, n)
        if args.latent_distance and size == args.sizes[0]:
            report["latent_distance"] = latent_distance(run_worker, args, size)
            _write(report, args.out)
    if "max" in args.batch_sizes:
        for size in args.sizes:  # the largest batch the worker's heaviest path (exact) runs at this size
            n = largest_batch(lambda b, s=size: run_worker(b, 1, s, "exact"), device, limit=args.max_probe)
            print(f"{size}²: largest batch that fits {n} (probed up to {args.max_probe})", file=sys.stderr)
            report.setdefault("largest_batch", {})[str(size)] = n
            _write(report, args.out)
            if n is not None and n not in args.batch_sizes:
                measure(size, n)
    print_table(report)
    _write(report, args.out)
    return report


def latent_distance(run_worker, args, size: int) -> dict:
    """||z - z_exact|| / ||z_exact|| of the final latents, per preset (mean, sd over images), same vectors and seeds."""
    n = args.latent_distance

    def latents(preset):
        return torch.stack(run_worker(n, args.steps, size, preset, output_type="latent")).double().cpu().flatten(1)

    exact = latents("exact")
    out = {}
    for preset in args.presets:
        d = ((latents(preset) - exact).norm(dim=1) / exact.norm(dim=1)).numpy()
        out[preset] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)) if n > 1 else 0.0, "n": n, "size": size}
        print(f"latent distance to exact at {size}²: {preset} {d.mean():.4f}", file=sys.stderr)
    return out


def _progress(row: dict, path: str) -> None:
    r = row[path]
    text = "out of memory" if r is None else f"{r['images_per_s']:.3f} img/s (warm-up {r['warmup_s']:.1f} s)"
    print(f"{row['size']}² batch {row['batch_size']} {path}: {text}", file=sys.stderr, flush=True)


def _write(report: dict, out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))


def print_table(report: dict) -> None:
    s = report["settings"]
    print(
        f"\ndecode benchmark: {report['arch']} on {report['environment']['device']} ({report['device_kind']}, "
        f"{report['dtype']}), {s['steps']} steps, CFG {s['guidance_scale']}, {report['scheduler']}, stored "
        f"{s['output_size']}², worker options {report['worker_options']}"
    )
    for name, plan in report["presets"].items():
        print(f"  preset {name}: {plan['scheduler']}, {plan['steps']} steps, full UNet every {plan['cache_interval']}")
    presets = list(report["presets"])
    head = f"{'size':>5} {'batch':>5} {'diffusers img/s':>15} " + " ".join(
        f"{p + ' img/s':>12} {'ratio':>6}" for p in presets
    )
    print(head)
    print("-" * len(head))
    for name, d in report.get("latent_distance", {}).items():
        print(f"  latent distance to exact ({d['n']} images, {d['size']}²): {name} {d['mean']:.4f} ± {d['sd']:.4f}")
    for r in report["rows"]:
        base = r.get("diffusers")
        cells = [f"{r['size']:>5} {r['batch_size']:>5} {base['images_per_s'] if base else float('nan'):>15.3f}"]
        for p in presets:
            cells.append(f"{r[p]['images_per_s']:>12.3f} {r[p].get('ratio_to_diffusers', float('nan')):>6.2f}")
        print(" ".join(cells))


if __name__ == "__main__":
    main()
