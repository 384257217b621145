"""CLI commands ``worker``, ``generate``, ``import-images``, ``wait``, ``make-tiny-model`` and ``demo``.

``generate`` and ``wait`` work in-process against Redis (the same use cases
and queue the API uses) or, with ``--api URL``, through the HTTP API. Bad
input prints one line ``error: <field>: <message>`` and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..decoding.presets import DEFAULT_PRESET, DEFAULT_PROMPT_TEMPLATE, PRESETS, SCHEDULERS
from ..errors import InputError, Unavailable
from . import core
from .app import app
from .core import _api_call, _registry_client, progress_bar


@app.command()
def worker(
    queue: list[str] | None = typer.Option(None, "--queue", help="Queue name (repeatable); default from settings."),
    burst: bool = typer.Option(False, help="Exit when the queues are empty."),
    max_jobs: int | None = typer.Option(None, min=1, help="Exit after this many jobs (process recycling)."),
    scheduler: bool = typer.Option(True, help="Also run RQ's scheduler (moves retries waiting out a back-off)."),
    log_level: str = typer.Option("INFO", help="Logging level: DEBUG, INFO, WARNING or ERROR."),
    gpus: str | None = typer.Option(
        None,
        help="'all' or device ids '0,1,...': one worker process per CUDA device "
        "(CUDA_VISIBLE_DEVICES each), all on the same queues.",
    ),
    processes: int | None = typer.Option(
        None,
        min=1,
        help="Start this many worker processes on the same queues (CPU, or one device shared); not with --gpus.",
    ),
) -> None:
    """Run a non-forking diffusion worker: load the pipeline once, then decode queued jobs."""
    import logging

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if gpus is not None and processes is not None:
        raise InputError("processes", "give --gpus (one process per device) or --processes, not both")
    devices: list[str | None] | None = None  # one worker process per entry (None: no device named)
    if gpus is not None:
        devices = list(_worker_devices(gpus))
    elif processes is not None:
        devices = [None] * processes
    _registry_client()  # fail with a one-line error when Redis is unreachable (and share an embedded one)
    if devices is not None:
        from ..worker.process import run_worker_processes

        child_args = [arg for q in queue or [] for arg in ("--queue", q)]
        child_args += ["--burst"] * burst + (["--max-jobs", str(max_jobs)] if max_jobs else [])
        child_args += ["--scheduler" if scheduler else "--no-scheduler", "--log-level", log_level]
        code = run_worker_processes(child_args, devices, recycle=bool(max_jobs) and not burst)
        raise typer.Exit(code)
    from ..worker.process import run_worker

    run_worker(queue, burst=burst, max_jobs=max_jobs, with_scheduler=scheduler, logging_level=log_level.upper())


def _worker_devices(spec: str) -> list[str]:
    """``--gpus`` checked against the CUDA devices torch sees (counted without starting CUDA in this process)."""
    import os

    import torch

    from ..worker.process import gpu_assignments

    return gpu_assignments(spec, torch.cuda.device_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))


def _load_sample(source: str):
    """A local ``.npz`` written by ``oodsynth sample --out``, or None for a sample id kept in Redis."""
    from ..state.samples import StoredSample

    path = Path(source)
    if path.suffix != ".npz" and not path.is_file():
        return None
    if not path.is_file():
        raise InputError("sample", f"no such file: {path}")
    try:
        return StoredSample.load(path)
    except Exception as exc:  # a foreign or damaged file
        raise InputError("sample", f"cannot read {path} as a sample ({exc})") from None


def _wait(job_ids: list[str], api: str | None, timeout: float | None) -> list[dict]:
    from ..queue.enqueue import wait_for_jobs

    with progress_bar("decoding", "img") as update:
        if api:
            return _api_call(core._api_client(api).wait, job_ids, timeout=timeout, progress=update)
        try:
            return wait_for_jobs(job_ids, _registry_client(), timeout=timeout, progress=update)
        except TimeoutError as exc:
            raise Unavailable("timeout", str(exc)) from None


def _report(states: list[dict]) -> None:
    images = sum(len((s.get("result") or {}).get("images", [])) for s in states)
    failed = [s for s in states if s["status"] != "finished"]
    typer.echo(f"{len(states) - len(failed)}/{len(states)} jobs finished, {images} images")
    for s in failed:
        last = (s.get("error") or "").strip().splitlines()[-1:] or [""]
        typer.echo(f"job {s['id']}: {s['status']}: {last[0]}", err=True)
    if failed:
        raise typer.Exit(Unavailable.exit_code)


@app.command()
def generate(
    sample: str = typer.Argument(..., help="Sample id (from 'oodsynth sample' or POST /sample), or its .npz."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Result-store dataset the images go into."),
    images_per_vector: int = typer.Option(1, min=1, help="Images per vector, each with its own seed."),
    prompt_template: str = typer.Option(DEFAULT_PROMPT_TEMPLATE, help="Prompt; {token} is the vector."),
    steps: int = typer.Option(50, help="Denoising steps."),
    guidance_scale: float = typer.Option(7.5, help="Classifier-free guidance scale."),
    height: int = typer.Option(512, help="Decode height (multiple of 8)."),
    width: int = typer.Option(512, help="Decode width (multiple of 8)."),
    output_size: int = typer.Option(256, help="Stored image size."),
    scheduler: str = typer.Option("pndm", help=f"Solver: {', '.join(SCHEDULERS)}."),
    preset: str = typer.Option(
        DEFAULT_PRESET,
        help=f"{' or '.join(PRESETS)}: 'fast' = DPM-Solver++ at half the "
        "steps + deep-feature reuse (measured fidelity: bench/results/decode_presets/decode_presets.md).",
    ),
    seed: int | None = typer.Option(None, min=0, help="Base seed of the per-image seeds."),
    init_dataset: str | None = typer.Option(
        None,
        help="img2img (SDEdit): start each image from a real image of its class in this result-store dataset "
        "(<dataset>/<class name>/*.png; see 'oodsynth import-images') instead of from pure noise.",
    ),
    strength: float | None = typer.Option(
        None, help="With --init-dataset: how far the init image is noised, in (0, 1] (default 0.8)."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for the jobs with a progress bar."),
    timeout: float | None = typer.Option(None, help="With --wait: give up after this many seconds."),
    api: str | None = typer.Option(None, help="API base URL; in-process against Redis when left out."),
) -> None:
    """Queue decoding of a sample's vectors into images; prints the job ids, one per line."""
    import pydantic

    from ..service import GenerateRequest

    local = _load_sample(sample)
    try:
        req = GenerateRequest(
            dataset=dataset,
            sample_id=local.sample_id if local else sample,
            images_per_vector=images_per_vector,
            seed=seed,
            prompt_template=prompt_template,
            steps=steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            output_size=output_size,
            scheduler=scheduler,
            preset=preset,
            init_images={"dataset": init_dataset} if init_dataset is not None else None,  # type: ignore[arg-type]  # pydantic validates a dict into InitImages (strict models too), which keeps the error at init_images.dataset; its mypy plugin types a strict model's __init__ with the field types
            strength=strength,
        )
    except pydantic.ValidationError as exc:
        raise InputError.from_pydantic(exc) from None
    if api and local:
        raise InputError("sample", "with --api give the sample id; the API cannot read local files")
    queued = (
        _api_call(core._api_client(api).generate, **req.model_dump(exclude_none=True)) if api else _enqueue(req, local)
    )
    typer.echo(f"queued {queued['n_images']} images into {dataset!r} as {len(queued['job_ids'])} jobs", err=True)
    for job_id in queued["job_ids"]:
        typer.echo(job_id)
    if wait:
        _report(_wait(queued["job_ids"], api, timeout))


def _enqueue(req, local_sample) -> dict:
    from ..config import get_settings
    from ..service import enqueue_generation, plan_generation
    from ..state.fits import FitRegistry
    from ..state.samples import SampleRegistry

    settings, client = get_settings(), _registry_client()
    job = plan_generation(req, FitRegistry(client), SampleRegistry(client), settings, sample=local_sample)
    return {"job_ids": enqueue_generation(job, client, settings), "n_images": len(job.items)}


@app.command("import-images")
def import_images(
    folder: Path = typer.Argument(..., help="An image folder: one subfolder of images per class name."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Result-store dataset the images go into."),
) -> None:
    """Store real images as a result-store dataset: the init images of 'generate --init-dataset' (img2img)."""
    from ..config import get_settings
    from ..service.generation import import_image_folder
    from ..store.results import ResultStore

    out = import_image_folder(folder, dataset, ResultStore(get_settings().store))
    counts = ", ".join(f"{name} {n}" for name, n in out["classes"].items())
    typer.echo(f"{out['written']} images stored in {dataset!r}, {out['skipped']} already there ({counts})")


@app.command("wait")
def wait_command(
    job_ids: list[str] = typer.Argument(..., help="Job ids printed by 'oodsynth generate'."),
    timeout: float | None = typer.Option(None, help="Give up after this many seconds."),
    api: str | None = typer.Option(None, help="API base URL; in-process against Redis when left out."),
) -> None:
    """Wait for jobs with a progress bar over their images; exit 1 if any failed."""
    _report(_wait(job_ids, api, timeout))


@app.command("make-tiny-model")
def make_tiny_model(
    path: Path = typer.Argument(..., help="Folder to write the pipeline into."),
    words: str = typer.Option(
        ",".join(("cat", "dog", "ship", "truck", "bird", "fish", "airplane", "horse")),
        help="Comma-separated class words, each one token of the tokenizer.",
    ),
) -> None:
    """Write a tiny random-weight SD pipeline (768-d text encoder) for offline tests and demos."""
    from ..offline_decoder.tiny_model import make_tiny_pipeline

    word_list = [w.strip() for w in words.split(",") if w.strip()]
    if not word_list:
        raise InputError("words", "give at least one word")
    try:
        out = make_tiny_pipeline(path, word_list)
    except ValueError as exc:
        raise InputError("words", str(exc)) from None
    typer.echo(f"tiny pipeline ({len(word_list)} words) -> {out}  (use OODSYNTH_MODEL={out})")


@app.command()
def demo(
    n_per_class: int = typer.Option(2, min=1, max=20, help="Outlier vectors (images) per class."),
    steps: int = typer.Option(None, min=1, max=50, help="Denoising steps (default: the decoder's own)."),
    timeout: float = typer.Option(600, help="Give up after this many seconds of decoding."),
) -> None:
    """End to end on this machine, offline: Redis, API, a worker, the trained animals decoder; fit, sample, generate."""
    from ..demo import DemoConfig, run_demo

    try:
        with progress_bar("decoding", "img") as update:  # the bar starts with the first report, after set-up
            result = run_demo(
                DemoConfig(n_per_class=n_per_class, steps=steps, timeout_s=timeout),
                echo=lambda line: typer.echo(line, err=True),
                progress=update,
            )
    except (RuntimeError, TimeoutError) as exc:
        raise Unavailable("demo", str(exc)) from None
    typer.echo(f"{len(result.images)} images in {result.store / result.dataset}")
    for path in result.images[:5]:
        typer.echo(f"  {path}")
    if len(result.images) > 5:
        typer.echo(f"  ... and {len(result.images) - 5} more")
    typer.echo(f"manifest: {result.manifest}")
    typer.echo("everything stopped; rerun 'make demo' any time (the trained decoder is cached).")
