"""CLI commands ``serve``, ``fit`` and ``sample``.

``fit`` and ``sample`` work in-process against Redis (the same registry the
API uses; an embedded server is started when ``OODSYNTH_REDIS_URL`` is unset)
or, with ``--api URL``, through the HTTP API. Bad input prints one line
``error: <field>: <message>`` and exits with code 2, never a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import typer

from .app import app

BAD_INPUT = 2
UNAVAILABLE = 1


def fail(field: str | None, message: str, code: int = BAD_INPUT) -> NoReturn:
    typer.echo(f"error: {field}: {message}" if field else f"error: {message}", err=True)
    raise typer.Exit(code)


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse (``0.07``, ``true``, ``[1,2]``), else as strings."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            fail("params", f"expected key=value, got {item!r}")
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return params


def parse_classes(tokens: list[str] | None, class_names: list[str]) -> list[int | str] | None:
    """Class names or indices, repeated or comma-separated; a token naming a class wins over an index."""
    if not tokens:
        return None
    names = set(class_names)
    out: list[int | str] = []
    for token in (t.strip() for chunk in tokens for t in chunk.split(",")):
        if not token:
            continue
        out.append(token if token in names or not token.lstrip("-").isdigit() else int(token))
    return out


def _progress_bar(desc: str, unit: str):
    """A tqdm bar driven by a ``progress(done, total)`` callback."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit=unit, total=0, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _registry_client():
    import redis

    from ..redis_conn import get_redis

    try:
        client = get_redis()
        client.ping()
    except (redis.exceptions.RedisError, RuntimeError) as exc:
        fail("redis", f"cannot reach Redis ({exc})", UNAVAILABLE)
    return client


def _api_client(api: str):
    from ..client import OodsynthClient

    return OodsynthClient(api)


def _api_call(fn, *args, **kwargs):
    """Run a client call; API errors and connection failures become one line."""
    import httpx

    from ..client import OodsynthError

    try:
        return fn(*args, **kwargs)
    except OodsynthError as exc:
        fail(exc.field, exc.message, BAD_INPUT if exc.status < 500 else UNAVAILABLE)
    except httpx.HTTPError as exc:
        fail("api", f"cannot reach the API ({exc})", UNAVAILABLE)
    except TimeoutError as exc:  # OodsynthClient.wait
        fail("timeout", str(exc), UNAVAILABLE)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    reload: bool = typer.Option(False, help="Reload on code changes (development)."),
    workers: int = typer.Option(1, min=1, help="Worker processes; fits and samples are shared through Redis."),
) -> None:
    """Run the embed_sampler API (uvicorn on services.embed_sampler.app:app)."""
    import uvicorn

    from ..redis_conn import redis_url

    url = redis_url()  # starts the embedded server when unset and exports its URL to the workers
    typer.echo(f"redis: {url}", err=True)
    # uvicorn re-raises SIGTERM after its graceful shutdown; with the default handler the
    # process would die before atexit stops the embedded Redis. Exit normally instead.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run("services.embed_sampler.app:app", host=host, port=port, reload=reload, workers=workers)


@app.command()
def fit(
    bank: Path = typer.Argument(..., help="Feature bank .npz (features, labels, anchors, class_names)."),
    name: str = typer.Option(..., "--name", "-n", help="Fit name (1-64 of letters, digits, _ . -)."),
    density: str = typer.Option("vmf", help="vmf, gaussian_isotropic, gaussian_diagonal or gaussian_full."),
    replace: bool = typer.Option(False, help="Overwrite an existing fit of this name."),
    api: str | None = typer.Option(None, help="API base URL; in-process against Redis when left out."),
) -> None:
    """Fit one class density per class to a feature bank and store it under NAME."""
    from ..bank import BankError, load_bank
    from ..densities import DENSITY_KINDS
    from ..registry import FieldError, split_error, validate_fit_name

    if not bank.is_file():
        fail("bank", f"no such file: {bank}")
    if density not in DENSITY_KINDS:
        fail("density", f"unknown density {density!r}; choose one of {', '.join(DENSITY_KINDS)}")
    try:
        validate_fit_name(name)
    except FieldError as exc:
        fail(exc.field, exc.message)

    if api:
        summary = _api_call(_api_client(api).fit, name, bank, density, replace=replace)
    else:
        from rich.console import Console

        from ..densities import ClassDensities
        from ..registry import FitRegistry

        try:
            feature_bank = load_bank(bank)
        except BankError as exc:
            fail(exc.field, f"{exc.message} (in {bank})")
        registry = FitRegistry(_registry_client())
        if not replace and name in registry.list():
            fail("name", f"a fit named {name!r} already exists (pass --replace to overwrite it)")
        bar, update = _progress_bar(f"fitting {density}", "class")
        try:
            densities = ClassDensities(kind=density).fit(feature_bank, progress=update)
        except ValueError as exc:
            fail(*split_error(exc, "density"))
        finally:
            bar.close()
        with Console(stderr=True).status(f"storing fit {name!r} in Redis"):
            try:
                summary = registry.put(name, densities, feature_bank, replace=replace)
            except FieldError as exc:
                fail(exc.field, exc.message)
    typer.echo(
        f"fit {summary['name']!r}: {summary['kind']}, {summary['n_classes']} classes, "
        f"dim {summary['dim']}, {summary['n_bank']} bank vectors"
    )


@app.command()
def sample(
    fit: str = typer.Option(..., "--fit", help="Name of a stored fit."),
    method: str = typer.Option(..., "--method", help="knn_boundary, inverse_sgld, inverse_rejection or barker."),
    n_per_class: int = typer.Option(..., "--n-per-class", help="Vectors per class."),
    out: Path = typer.Option(..., "--out", help="Where to write the sample (.npz)."),
    classes: list[str] | None = typer.Option(
        None, "--classes", help="Class names or indices (repeat, or comma-separate); all when left out."
    ),
    seed: int | None = typer.Option(None, help="Random seed."),
    param: list[str] | None = typer.Option(None, "--param", "-p", help="Sampler parameter key=value (repeatable)."),
    scale_to_anchor: bool = typer.Option(True, help="Rescale vectors to their class anchor's norm."),
    knn_diagnostics: bool = typer.Option(False, help="Also compute k-NN distances to the ID bank."),
    api: str | None = typer.Option(None, help="API base URL; in-process against Redis when left out."),
) -> None:
    """Draw outlier vectors from a fit, keep them in Redis, and write them to OUT (.npz)."""
    from ..config import get_settings

    cap = get_settings().max_n_per_class
    if not 1 <= n_per_class <= cap:
        fail("n_per_class", f"{n_per_class} is outside [1, {cap}] (settings OODSYNTH_MAX_N_PER_CLASS)")
    params = parse_params(param)
    if not out.parent.is_dir():
        fail("out", f"folder {out.parent} does not exist")

    if api:
        stored = _sample_over_api(api, fit, method, n_per_class, classes, seed, params, scale_to_anchor, knn_diagnostics)
    else:
        stored = _sample_in_process(fit, method, n_per_class, classes, seed, params, scale_to_anchor, knn_diagnostics)
    stored.save(out)
    percentile = stored.diagnostics.get("id_percentile")
    finite = percentile[np.isfinite(percentile)] if percentile is not None else np.zeros(0)
    extra = f", mean ID percentile {float(finite.mean()):.2f}" if finite.size else ""
    typer.echo(
        f"sample {stored.sample_id}: {len(stored.vectors)} vectors of dim {stored.dim} "
        f"from fit {stored.fit_name!r} by {stored.method}{extra} -> {out}"
    )


def _sample_in_process(fit_name, method, n_per_class, class_tokens, seed, params, scale_to_anchor, knn_diagnostics):
    import pydantic

    from ..registry import FieldError, FitRegistry, SampleRegistry, StoredSample, resolve_classes, split_error
    from ..samplers import UnknownSamplerError, get_sampler

    client = _registry_client()
    try:
        densities, bank = FitRegistry(client).get(fit_name)
    except KeyError:
        fail("fit", f"no fit named {fit_name!r}")
    try:
        sampler = get_sampler(method, params)
    except UnknownSamplerError as exc:
        fail(*split_error(exc, "method"))
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        fail(".".join(["params", *map(str, first["loc"])]), first["msg"])
    try:
        classes = resolve_classes(densities.class_names_, parse_classes(class_tokens, densities.class_names_))
    except FieldError as exc:
        fail(exc.field, exc.message)
    bar, update = _progress_bar(f"{method}", "step")
    try:
        result = sampler.sample(
            densities,
            n_per_class,
            classes=classes,
            seed=seed,
            bank=bank if (sampler.needs_bank or knn_diagnostics) else None,
            scale_to_anchor=scale_to_anchor,
            progress=update,
        )
    except ValueError as exc:
        fail(*split_error(exc, "params"))
    finally:
        bar.close()
    stored = StoredSample.from_result(result, fit_name, densities.class_names_)
    SampleRegistry(client).put_stored(stored)
    return stored


def _sample_over_api(api, fit_name, method, n_per_class, class_tokens, seed, params, scale_to_anchor, knn_diagnostics):
    from ..client import sample_arrays
    from ..registry import StoredSample

    client = _api_client(api)
    class_names = [c["name"] for c in _api_call(client.get_fit, fit_name)["classes"]]
    response = _api_call(
        client.sample,
        fit_name,
        method,
        n_per_class,
        classes=parse_classes(class_tokens, class_names),
        seed=seed,
        params=params,
        scale_to_anchor=scale_to_anchor,
        knn_diagnostics=knn_diagnostics,
    )
    vectors, class_index, diagnostics = sample_arrays(response)
    return StoredSample(
        sample_id=response["sample_id"],
        fit_name=response["fit"],
        method=response["method"],
        params=response["params"],
        seed=response["seed"],
        vectors=vectors,
        class_index=class_index,
        class_names=class_names,
        diagnostics=diagnostics,
    )
