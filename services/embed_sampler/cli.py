"""``oodsynth serve``: this service's command, added to the CLI by the ``oodsynth.commands`` entry point.

The library's CLI never names the services; each service contributes its own
command (see ``[project.entry-points."oodsynth.commands"]`` in pyproject.toml).
"""

from __future__ import annotations

import signal
import sys

import typer

LOOPBACK = "127.0.0.1"


def bind_host(host: str) -> str:
    """``host``, or 127.0.0.1 when no API keys are configured: an open API is for this machine only."""
    from oodsynth.api_keys import parse_api_keys
    from oodsynth.config import get_settings

    if parse_api_keys(get_settings().api_keys):
        typer.echo("API keys configured: every route but /healthz needs 'Authorization: Bearer <key>'", err=True)
        return host
    if host not in (LOOPBACK, "localhost", "::1"):
        typer.echo(f"no API keys configured (OODSYNTH_API_KEYS): binding to {LOOPBACK} only, not {host}", err=True)
    else:
        typer.echo(f"no API keys configured (OODSYNTH_API_KEYS): open API, bound to {LOOPBACK} only", err=True)
    return LOOPBACK


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    reload: bool = typer.Option(False, help="Reload on code changes (development)."),
    workers: int = typer.Option(1, min=1, help="Worker processes; fits and samples are shared through Redis."),
    graceful_timeout: int = typer.Option(
        10,
        min=1,
        help="On SIGTERM, seconds to let requests finish before they are cancelled (sampling threads "
        "then stop within OODSYNTH_SAMPLE_TIME_BUDGET_S).",
    ),
) -> None:
    """Run the embed_sampler API (uvicorn on services.embed_sampler.app:app, with a request-header deadline)."""
    import uvicorn

    from oodsynth.redact import redact_url
    from oodsynth.state.redis_conn import redis_url

    from .header_deadline import http_protocol

    host = bind_host(host)
    url = redis_url()  # starts the embedded server when unset and exports its URL to the workers
    typer.echo(f"redis: {redact_url(url)}", err=True)  # the password must not reach logs (docker logs)
    # uvicorn re-raises SIGTERM after its graceful shutdown; with the default handler the
    # process would die before atexit stops the embedded Redis. Exit normally instead.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run(
        "services.embed_sampler.app:app",
        host=host,
        port=port,
        reload=reload,
        workers=workers,
        timeout_graceful_shutdown=graceful_timeout,
        http=http_protocol(),
    )
