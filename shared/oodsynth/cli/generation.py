"""CLI commands ``worker``, ``generate``, ``wait``, ``make-tiny-model`` and ``demo``.

``generate`` and ``wait`` work in-process against Redis (the same queue the
API uses) or, with ``--api URL``, through the HTTP API. Bad input prints one
line ``error: <field>: <message>`` and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .core import UNAVAILABLE, _api_call, _api_client, _progress_bar, _registry_client, fail


@app.command()
def worker(
    queue: list[str] | None = typer.Option(None, "--queue", help="Queue name (repeatable); default from settings."),
    burst: bool = typer.Option(False, help="Exit when the queues are empty."),
    max_jobs: int | None = typer.Option(None, min=1, help="Exit after this many jobs (process recycling)."),
    scheduler: bool = typer.Option(True, help="Also run RQ's scheduler (moves retries waiting out a back-off)."),
    log_level: str = typer.Option("INFO", help="Logging level."),
) -> None:
    """Run a non-forking diffusion worker: load the pipeline once, then decode queued jobs."""
    import logging

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _registry_client()  # fail with a one-line error when Redis is unreachable
    from services.diffusion_worker.worker import run_worker

    run_worker(queue, burst=burst, max_jobs=max_jobs, with_scheduler=scheduler, logging_level=log_level.upper())


def _decode_settings(**values):
    import pydantic

    from ..jobs import DecodeSettings

    try:
        return DecodeSettings(**values)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        fail(".".join(map(str, first["loc"])), first["msg"].removeprefix("Value error, "))


def _load_sample(source: str):
    """A sample id kept in Redis, or a ``.npz`` written by ``oodsynth sample --out``."""
    from ..registry import SampleRegistry, StoredSample

    path = Path(source)
    if path.suffix == ".npz" or path.is_file():
        if not path.is_file():
            fail("sample", f"no such file: {path}")
        try:
            return StoredSample.load(path)
        except Exception as exc:  # a foreign or damaged file
            fail("sample", f"cannot read {path} as a sample ({exc})")
    try:
        return SampleRegistry(_registry_client()).get(source)
    except KeyError:
        fail("sample", f"no sample {source!r} in Redis (unknown or expired); pass the .npz from 'oodsynth sample --out'")


def _wait(job_ids: list[str], api: str | None, timeout: float | None) -> list[dict]:
    bar, update = _progress_bar("decoding", "img")
    try:
        if api:
            return _api_call(_api_client(api).wait, job_ids, timeout=timeout, progress=update)
        from ..queue import wait_for_jobs

        try:
            return wait_for_jobs(job_ids, _registry_client(), timeout=timeout, progress=update)
        except KeyError as exc:
            fail("job_ids", f"no job {exc.args[0]!r} (unknown or expired)")
    except TimeoutError as exc:
        fail("timeout", str(exc), UNAVAILABLE)
    finally:
        bar.close()


def _report(states: list[dict]) -> None:
    images = sum(len((s.get("result") or {}).get("images", [])) for s in states)
    failed = [s for s in states if s["status"] != "finished"]
    typer.echo(f"{len(states) - len(failed)}/{len(states)} jobs finished, {images} images")
    for s in failed:
        last = (s.get("error") or "").strip().splitlines()[-1:] or [""]
        typer.echo(f"job {s['id']}: {s['status']}: {last[0]}", err=True)
    if failed:
        raise typer.Exit(UNAVAILABLE)


@app.command()
def generate(
    sample: str = typer.Argument(..., help="Sample id (from 'oodsynth sample' or POST /sample), or its .npz."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Result-store dataset the images go into."),
    images_per_vector: int = typer.Option(1, min=1, help="Images per vector, each with its own seed."),
    prompt_template: str = typer.Option("A high-quality image of the {token}", help="Prompt; {token} is the vector."),
    steps: int = typer.Option(50, help="Denoising steps."),
    guidance_scale: float = typer.Option(7.5, help="Classifier-free guidance scale."),
    height: int = typer.Option(512, help="Decode height (multiple of 8)."),
    width: int = typer.Option(512, help="Decode width (multiple of 8)."),
    output_size: int = typer.Option(256, help="Stored image size."),
    scheduler: str = typer.Option("pndm", help="pndm, ddim, dpm++, dpm, euler or euler_a."),
    seed: int | None = typer.Option(None, min=0, help="Base seed of the per-image seeds."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the jobs with a progress bar."),
    timeout: float | None = typer.Option(None, help="With --wait: give up after this many seconds."),
    api: str | None = typer.Option(None, help="API base URL; in-process against Redis when left out."),
) -> None:
    """Queue decoding of a sample's vectors into images; prints the job ids, one per line."""
    decode = _decode_settings(
        prompt_template=prompt_template, steps=steps, guidance_scale=guidance_scale, height=height,
        width=width, output_size=output_size, scheduler=scheduler,
    )
    from ..store import validate_dataset_name

    try:
        validate_dataset_name(dataset)
    except ValueError as exc:
        fail("dataset", str(exc).removeprefix("dataset: "))
    if api:
        if Path(sample).suffix == ".npz":
            fail("sample", "with --api give the sample id; the API cannot read local files")
        queued = _api_call(
            _api_client(api).generate, dataset, sample_id=sample, images_per_vector=images_per_vector,
            seed=seed, **decode.decode_settings(),
        )
        job_ids, n_images = queued["job_ids"], queued["n_images"]
    else:
        from ..config import get_settings
        from ..jobs import job_from_sample
        from ..queue import enqueue_decode

        stored = _load_sample(sample)
        settings = get_settings()
        n_images = len(stored.vectors) * images_per_vector
        if n_images == 0:
            fail("sample", "the sample holds no vectors")
        if n_images > settings.max_images_per_request:
            fail("images_per_vector", f"{n_images} images is over the limit of {settings.max_images_per_request} "
                 "(settings OODSYNTH_MAX_IMAGES_PER_REQUEST)")
        job = job_from_sample(stored, dataset=dataset, model=settings.model, decode=decode,
                              images_per_vector=images_per_vector, seed=seed)
        job_ids = enqueue_decode(job, _registry_client())
    typer.echo(f"queued {n_images} images into {dataset!r} as {len(job_ids)} jobs", err=True)
    for job_id in job_ids:
        typer.echo(job_id)
    if wait:
        _report(_wait(job_ids, api, timeout))


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
    words: str = typer.Option(",".join(("cat", "dog", "ship", "truck", "bird", "fish", "airplane", "horse")),
                              help="Comma-separated class words, each one token of the tokenizer."),
) -> None:
    """Write a tiny random-weight SD pipeline (768-d text encoder) for offline tests and demos."""
    from ..tiny_model import make_tiny_pipeline

    word_list = [w.strip() for w in words.split(",") if w.strip()]
    if not word_list:
        fail("words", "give at least one word")
    try:
        out = make_tiny_pipeline(path, word_list)
    except ValueError as exc:
        fail("words", str(exc))
    typer.echo(f"tiny pipeline ({len(word_list)} words) -> {out}  (use OODSYNTH_MODEL={out})")


@app.command()
def demo(
    n_per_class: int = typer.Option(2, min=1, max=20, help="Outlier vectors (images) per class."),
    steps: int = typer.Option(4, min=1, max=50, help="Denoising steps."),
    timeout: float = typer.Option(600, help="Give up after this many seconds of decoding."),
) -> None:
    """End to end on this machine, offline: Redis, API, a worker, tiny SD; fit, sample, generate."""
    from ..demo import DemoConfig, run_demo

    bars: list = []  # the bar starts with the first progress report, after the set-up lines

    def update(done: int, total: int) -> None:
        if not bars:
            bars.extend(_progress_bar("decoding", "img"))
        bars[1](done, total)

    try:
        result = run_demo(DemoConfig(n_per_class=n_per_class, steps=steps, timeout_s=timeout),
                          echo=lambda line: typer.echo(line, err=True), progress=update)
    except (RuntimeError, TimeoutError) as exc:
        fail("demo", str(exc), UNAVAILABLE)
    finally:
        if bars:
            bars[0].close()
    typer.echo(f"{len(result.images)} images in {result.store / result.dataset}")
    for path in result.images[:5]:
        typer.echo(f"  {path}")
    if len(result.images) > 5:
        typer.echo(f"  ... and {len(result.images) - 5} more")
    typer.echo(f"manifest: {result.manifest}")
    typer.echo("everything stopped; rerun 'make demo' any time (the tiny model is cached).")


