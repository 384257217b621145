"""Load benchmark of the API: latency percentiles and throughput of /sample (JSON and .npz) and /generate.

Starts its own embedded Redis and ``uvicorn services.embed_sampler.app:app``
on 127.0.0.1 (a free port, API keys on), uploads a fit of 10 classes x 768-d,
then times, sequentially and at ``--concurrency`` clients:

* ``POST /sample`` of 1,000 vectors (10 classes x 100) answered as JSON;
* the same answered as ``.npz`` (``Accept: application/x-npz``);
* ``POST /generate`` of a stored 10-vector sample: 10 images, one job (enqueue only: no worker runs);
* ``GET /healthz`` (one Redis round trip: INFO memory and a probe SET), the baseline: what the same server, client and
  machine give a request that does no work, so that /generate's latency is read against this stack's floor.

Request counts are bounded, every request has a timeout, and the server and
Redis are stopped at the end (or on Ctrl-C). The server's RSS is read before
and after. Prints a markdown table and writes JSON with ``--out``.

    python bench/load.py                      # the measured run (about a minute on 2 cores)
    python bench/load.py --quick              # smoke run
    python bench/load.py --memory-calls 1000  # API RSS over 1,000 sequential /sample calls (npz, then JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers: the toy bank the tests use

NPZ = "application/x-npz"


def api_pids(pid: int) -> list[int]:
    """The API process and its direct children (uvicorn's worker processes with ``--workers`` > 1)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid] + [int(c) for c in (children.read_text().split() if children.is_file() else [])]


def rss_mb(pid: int) -> float:
    """Resident memory of the API: its process plus its worker processes."""
    total = 0
    for p in api_pids(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def start_server(home: Path, redis_url: str, api_keys: str, port: int, workers: int = 1) -> subprocess.Popen:
    env = {
        **os.environ,
        "OODSYNTH_HOME": str(home),
        "OODSYNTH_REDIS_URL": redis_url,
        "OODSYNTH_API_KEYS": api_keys,
        "OODSYNTH_STORE": str(home / "store"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "services.embed_sampler.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ],
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError("the API did not answer /healthz within 60 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def served_api(api_keys: str = "") -> Iterator[tuple[subprocess.Popen, int]]:
    """An API process (and its port) with its own home and embedded Redis, both stopped on exit: the harness the
    hostile benchmarks share."""
    from oodsynth.demo import free_port
    from oodsynth.state.redis_conn import start_embedded_redis

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        redis_server = start_embedded_redis(home / "redis")
        port = free_port()
        proc = start_server(home, redis_server.url, api_keys, port)
        try:
            yield proc, port
        finally:
            stop(proc)
            redis_server.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the API process and its worker processes (from /proc)."""
    total = 0
    for p in api_pids(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def timed(client: httpx.Client, method: str, path: str, **kwargs) -> tuple[float, int, int]:
    start = time.perf_counter()
    try:
        r = client.request(method, path, **kwargs)
        status, size = r.status_code, len(r.content)
    except httpx.HTTPError:
        status, size = -1, 0
    return time.perf_counter() - start, status, size


def run(
    client: httpx.Client,
    n: int,
    concurrency: int,
    method: str,
    path: str,
    ok: int,
    server_pid: int | None = None,
    **kwargs,
) -> dict:
    """``n`` requests, ``concurrency`` at a time: percentiles (ms), throughput (req/s), errors, bytes per answer,
    and the CPU ms per request of the server and of this client (their own costs, apart from the machine's other
    load: on 2 shared cores, the client's share is CPU the server does not get)."""
    cpu_before = cpu_seconds(server_pid) if server_pid else float("nan")
    client_cpu_before = time.process_time()
    start = time.perf_counter()
    if concurrency == 1:
        results = [timed(client, method, path, **kwargs) for _ in range(n)]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda _: timed(client, method, path, **kwargs), range(n)))
    wall = time.perf_counter() - start
    server_cpu_ms = (cpu_seconds(server_pid) - cpu_before) * 1000 / n if server_pid else float("nan")
    client_cpu_ms = (time.process_time() - client_cpu_before) * 1000 / n
    lat = np.array([r[0] for r in results]) * 1000
    errors = sum(r[1] != ok for r in results)
    return {
        "n": n,
        "concurrency": concurrency,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        "throughput_rps": n / wall,
        "errors": int(errors),
        "statuses": sorted({r[1] for r in results}),
        "bytes_per_answer": int(np.mean([r[2] for r in results])),
        "server_cpu_ms_per_request": server_cpu_ms,
        "client_cpu_ms_per_request": client_cpu_ms,
    }


def memory_run(client: httpx.Client, pid: int, calls: int, sample: dict) -> dict[str, list[float]]:
    """API RSS (MB) every ``calls // 10`` sequential /sample calls, as npz and as JSON (vectors included)."""
    trace: dict[str, list[float]] = {}
    for name, headers in (("npz", {"Accept": NPZ}), ("json", {})):
        trace[name] = [rss_mb(pid)]
        for i in range(1, calls + 1):
            client.post("/sample", json={**sample, "seed": i}, headers=headers).raise_for_status()
            if i % max(1, calls // 10) == 0:
                trace[name].append(rss_mb(pid))
                print(f"{name} {i}: RSS {trace[name][-1]:.0f} MB", file=sys.stderr, flush=True)
    return trace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--method", default="inverse_sgld", help="sampler for /sample (inverse_sgld: the cheapest per vector)"
    )
    parser.add_argument("--sequential", type=int, default=20, help="requests per sequential run")
    parser.add_argument("--concurrent", type=int, default=60, help="requests per concurrent run")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 sequential / 20 concurrent requests")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("sample_json", "sample_npz", "generate", "healthz"),
        help="run only these request kinds (default: all four)",
    )
    parser.add_argument(
        "--generate-per-class",
        type=int,
        default=1,
        help="vectors per class (of 10) in the sample each /generate enqueues, one image each",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (oodsynth serve --workers)")
    parser.add_argument(
        "--memory-calls",
        type=int,
        default=0,
        help="instead: this many sequential /sample calls (npz, then JSON), API RSS every 10%%",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # `timeout` too stops the server and Redis
    if args.quick:
        args.sequential, args.concurrent = 5, 20

    from oodsynth.api_keys import new_api_key
    from oodsynth.demo import free_port
    from oodsynth.state.redis_conn import start_embedded_redis
    from tests.helpers.toy_banks import toy_bank

    key, entry = new_api_key("write")
    results: dict = {"method": args.method, "cpu_load_1m_at_start": os.getloadavg()[0], "runs": {}}
    with tempfile.TemporaryDirectory(prefix="oodsynth-load-") as tmp:
        redis_server = start_embedded_redis(Path(tmp) / "redis")
        port = free_port()
        server = None
        try:
            server = start_server(Path(tmp), redis_server.url, entry, port, args.workers)
            headers = {"Authorization": f"Bearer {key}"}
            limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120, limits=limits
            ) as client:
                bank = toy_bank(n_classes=10, n_per_class=200, dim=768, spread=0.02)
                r = client.post("/fits", data={"name": "load"}, files={"file": ("b.npz", bank.to_bytes(), NPZ)})
                r.raise_for_status()
                sample = {"fit": "load", "method": args.method, "n_per_class": 100, "seed": 0}
                results["rss_mb_before"] = rss_mb(server.pid)
                if args.memory_calls:
                    results["rss_mb"] = memory_run(client, server.pid, args.memory_calls, sample)
                    print(json.dumps(results, indent=1))
                    return 0
                plan = [
                    ("sample_json", "POST", "/sample", 200, {"json": sample}),
                    ("sample_npz", "POST", "/sample", 200, {"json": sample, "headers": {"Accept": NPZ}}),
                    ("generate", "POST", "/generate", 202, {}),
                    ("healthz", "GET", "/healthz", 200, {}),
                ]
                for name, method, path, ok, kwargs in plan:
                    if args.only and name not in args.only:
                        continue
                    if name == "generate":  # drawn now: the /sample runs before may have evicted an older sample
                        small = client.post(
                            "/sample", json={**sample, "n_per_class": args.generate_per_class, "include_vectors": False}
                        ).json()
                        kwargs["json"] = {
                            "dataset": "load",
                            "sample_id": small["sample_id"],
                            "steps": 20,
                            "height": 256,
                            "width": 256,
                        }
                    for concurrency, n in ((1, args.sequential), (args.concurrency, args.concurrent)):
                        label = f"{name} x{concurrency}"
                        results["runs"][label] = run(client, n, concurrency, method, path, ok, server.pid, **kwargs)
                        print(f"{label}: {json.dumps(results['runs'][label])}", file=sys.stderr, flush=True)
                results["rss_mb_after"] = rss_mb(server.pid)
        finally:
            if server is not None:
                stop(server)
            redis_server.stop()
    results["cpu_load_1m_at_end"] = os.getloadavg()[0]
    n_gen = 10 * args.generate_per_class
    print(
        f"\n/sample: 1,000 vectors (10 classes x 100, 768-d, {args.method}); /generate: enqueue of a {n_gen}-vector "
        f"sample ({n_gen} images)"
    )
    print(
        "| run | n | p50 ms | p95 ms | p99 ms | req/s | errors | bytes/answer | API CPU ms/request | "
        "client CPU ms/request |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results["runs"].items():
        print(
            f"| {label} | {r['n']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['throughput_rps']:.1f} | {r['errors']} | {r['bytes_per_answer']:,} | {r['server_cpu_ms_per_request']:.1f} | "
            f"{r['client_cpu_ms_per_request']:.1f} |"
        )
    for concurrency in (1, args.concurrency):
        generate, floor = (
            results["runs"].get(f"generate x{concurrency}"),
            results["runs"].get(f"healthz x{concurrency}"),
        )
        if generate and floor:
            print(
                f"/generate against /healthz at x{concurrency}: p50 {generate['p50_ms'] / floor['p50_ms']:.2f}x, "
                f"p99 {generate['p99_ms'] / floor['p99_ms']:.2f}x; API CPU {generate['server_cpu_ms_per_request']:.1f} "
                f"against {floor['server_cpu_ms_per_request']:.1f} ms/request"
            )
    print(
        f"API RSS {results['rss_mb_before']:.0f} -> {results['rss_mb_after']:.0f} MB; "
        f"1-min load average {results['cpu_load_1m_at_start']:.1f} at start, {results['cpu_load_1m_at_end']:.1f} at end"
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
