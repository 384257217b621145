"""CLI commands ``fit`` and ``sample``.

``fit`` and ``sample`` work in-process against Redis (the same registry the
API uses; an embedded server is started when ``OODSYNTH_REDIS_URL`` is unset)
or, with ``--api URL``, through the HTTP API. Both paths call the same use
cases (``oodsynth.service`` in-process, the API's routes over HTTP) and raise
the same typed errors, which ``cli.app`` prints as one line
``error: <field>: <message>`` with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import typer

from ..api_keys import DEFAULT_TENANT, SCOPES
from ..densities import DENSITY_KINDS
from ..errors import InputError, NotFound, Unavailable
from ..samplers import DEFAULT_METHOD, SAMPLERS
from .app import app


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse (``0.07``, ``true``, ``[1,2]``), else as strings."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError("params", f"expected key=value, got {item!r}")
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


def class_names(fit_summary: dict) -> list[str]:
    return [c["name"] for c in fit_summary["classes"]]


@contextmanager
def progress_bar(desc: str, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar; the bar appears with the first report."""
    from tqdm.auto import tqdm

    bars: list = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=desc, unit=unit, total=total, file=sys.stderr, leave=False, dynamic_ncols=True))
        bar = bars[0]
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        if bars:
            bars[0].close()


def _registry_client():
    import redis

    from ..state.redis_conn import get_redis

    try:
        client = get_redis()
        client.ping()
    except (redis.exceptions.RedisError, RuntimeError) as exc:
        raise Unavailable("redis", f"cannot reach Redis ({exc})") from None
    return client


def _api_client(api: str):
    from ..client import OodsynthClient

    return OodsynthClient(api)


def _api_call(fn, *args, **kwargs):
    """Run a client call; the API's own errors arrive typed already, connection failures become ``Unavailable``."""
    import httpx

    try:
        return fn(*args, **kwargs)
    except httpx.HTTPError as exc:
        raise Unavailable("api", f"cannot reach the API ({exc})") from None
    except TimeoutError as exc:  # OodsynthClient.wait
        raise Unavailable("timeout", str(exc)) from None


@app.command()
def fit(
    bank: Path = typer.Argument(..., help="Feature bank .npz (features, labels, anchors, class_names)."),
    name: str = typer.Option(..., "--name", "-n", help="Fit name (1-64 of letters, digits, _ . -)."),
    density: str = typer.Option("vmf", help=f"Class density: {', '.join(DENSITY_KINDS)}."),
    replace: bool = typer.Option(False, help="Overwrite an existing fit of this name."),
    api: str | None = typer.Option(None, help="API base URL; in-process against Redis when left out."),
) -> None:
    """Fit one class density per class to a feature bank and store it under NAME."""
    if api:
        summary = _api_call(_api_client(api).fit, name, bank, density, replace=replace)
    else:
        from ..service import create_fit
        from ..state.fits import FitRegistry

        with progress_bar(f"fitting {density}", "class") as update:
            summary = create_fit(FitRegistry(_registry_client()), name, bank, density, replace=replace, progress=update)
    typer.echo(
        f"fit {summary['name']!r}: {summary['kind']}, {summary['n_classes']} classes, "
        f"dim {summary['dim']}, {summary['n_bank']} bank vectors"
    )


@app.command()
def sample(
    fit: str = typer.Option(..., "--fit", help="Name of a stored fit."),
    method: str = typer.Option(DEFAULT_METHOD, "--method", help=f"Sampler: {', '.join(SAMPLERS)}."),
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
    if not out.parent.is_dir():
        raise InputError("out", f"folder {out.parent} does not exist")
    request = dict(
        fit=fit,
        method=method,
        n_per_class=n_per_class,
        seed=seed,
        params=parse_params(param),
        scale_to_anchor=scale_to_anchor,
        knn_diagnostics=knn_diagnostics,
    )
    stored = _sample_over_api(api, classes, **request) if api else _sample_in_process(classes, **request)
    stored.save(out)
    percentile = stored.diagnostics.get("id_percentile")
    finite = percentile[np.isfinite(percentile)] if percentile is not None else np.zeros(0)
    extra = f", mean ID percentile {float(finite.mean()):.2f}" if finite.size else ""
    typer.echo(
        f"sample {stored.sample_id}: {len(stored.vectors)} vectors of dim {stored.dim} "
        f"from fit {stored.fit_name!r} by {stored.method}{extra} -> {out}"
    )


def _sample_in_process(class_tokens, **request):
    from ..config import get_settings
    from ..service import draw_sample
    from ..state.fits import FitRegistry
    from ..state.samples import SampleRegistry

    settings = get_settings()
    client = _registry_client()
    fits = FitRegistry(client)
    classes = parse_classes(class_tokens, class_names(fits.summary(request["fit"]))) if class_tokens else None
    with progress_bar(request["method"], "step") as update:
        return draw_sample(
            fits, SampleRegistry(client, settings.result_ttl_s), settings, classes=classes, progress=update, **request
        )


def _sample_over_api(api, class_tokens, **request):
    client = _api_client(api)
    try:
        names = class_names(_api_call(client.get_fit, request["fit"]))
    except NotFound as exc:  # GET /fits/{name} calls it "name"; this command calls it --fit
        raise NotFound("fit", exc.message) from None
    # As .npz: the arrays as the server keeps them, no JSON floats to format and parse.
    return _api_call(client.sample_npz, classes=parse_classes(class_tokens, names), **request)


@app.command("api-key")
def api_key(
    scope: str = typer.Option(
        "write",
        help=f"{', '.join(SCOPES)}: read (GETs), write (fits, sample, generate, features), admin (everything).",
    ),
    tenant: str = typer.Option(
        DEFAULT_TENANT,
        help="Whose fits, samples, jobs and images the key creates and (below admin) alone reads: a slug.",
    ),
) -> None:
    """Print a new API key (for the client: OODSYNTH_API_KEY) and its entry for the server's OODSYNTH_API_KEYS."""
    from ..api_keys import new_api_key

    key, entry = new_api_key(scope, tenant)
    typer.echo(f"OODSYNTH_API_KEY={key}")
    typer.echo(f"OODSYNTH_API_KEYS entry: {entry}")
