"""Peak API memory under eight concurrent large JSON bodies: the /generate inline-vectors case of issue 32.

Starts its own embedded Redis and ``uvicorn services.embed_sampler.app:app``
(one process, default settings), then sends ``--bodies`` ``POST /generate``
bodies at once, each about ``--mib`` MiB of inline vectors (just under
``OODSYNTH_MAX_REQUEST_BYTES``) for a fit that does not exist, and samples the
API's RSS every 20 ms (``--invalid``: bodies without ``dataset``, answered 422). The baseline, measured in the same run, is ONE such
body alone. Prints idle, one-body and eight-body peaks and the statuses (404:
no such fit; 429: the memory budget was full when the body came to be decoded).

    nice -n 10 python bench/hostile_bodies.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from hostile_memory import PeakRSS  # noqa: E402  (the same RSS sampler)
from load import rss_mb, served_api  # noqa: E402  (bench/load.py: the same server harness)


def compact_body(mib: float, dim: int = 768) -> bytes:
    """A /generate body of about ``mib`` MiB whose every number is ``1``: two bytes per value, the most values
    (and Python objects once decoded) a body of that size can hold."""
    row = "[" + ",".join(["1"] * dim) + "]"
    rows = int(mib * 2**20 / (len(row) + 3))
    head = '{"dataset": "d", "fit": "no-such-fit", "classes": [' + ",".join(["0"] * rows) + '], "vectors": ['
    return (head + ",".join([row] * rows) + "]}").encode()


def inline_body(mib: float, dim: int = 768, seed: int = 0, *, invalid: bool = False) -> bytes:
    """A /generate body of about ``mib`` MiB: random unit vectors written with full float precision;
    ``invalid``: without its required ``dataset`` (a 422 whose error once echoed the whole body)."""
    rng = np.random.default_rng(seed)
    rows = max(1, int(mib * 2**20 / (dim * 21)))  # ~21 characters per float as JSON writes them
    vectors = rng.normal(size=(rows, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    body = {"dataset": "d", "fit": "no-such-fit", "vectors": vectors.tolist(), "classes": [0] * rows}
    if invalid:
        del body["dataset"]
    data = json.dumps(body).encode()
    while len(data) > mib * 2**20:  # trim to the cap
        rows = int(rows * 0.97)
        body["vectors"], body["classes"] = body["vectors"][:rows], body["classes"][:rows]
        data = json.dumps(body).encode()
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", type=int, default=8)
    parser.add_argument("--mib", type=float, default=15.9, help="body size; the default cap is 16 MiB")
    parser.add_argument("--invalid", action="store_true", help="bodies without 'dataset': answered 422")
    parser.add_argument("--compact", action="store_true", help="every value the integer 1: 2 bytes per value")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    body = compact_body(args.mib) if args.compact else inline_body(args.mib, invalid=args.invalid)
    print(f"body {len(body) / 2**20:.2f} MiB")
    headers = {"content-type": "application/json"}
    with served_api() as (proc, port):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            client.post("/generate", content=b'{"dataset": "d"}', headers=headers)  # warm the route
            time.sleep(1.0)
            idle = rss_mb(proc.pid)
            with PeakRSS(proc.pid) as one:
                one_status = client.post("/generate", content=body, headers=headers).status_code
            time.sleep(1.0)

            def send(_: int) -> int:
                return client.post("/generate", content=body, headers=headers).status_code

            with PeakRSS(proc.pid) as mix, ThreadPoolExecutor(args.bodies) as pool:
                statuses = Counter(pool.map(send, range(args.bodies)))
    result = {
        "body_mib": round(len(body) / 2**20, 2),
        "invalid": args.invalid,
        "compact": args.compact,
        "idle_mb": round(idle, 1),
        "one_body_peak_mb": round(one.peak, 1),
        "one_body_status": one_status,
        "bodies": args.bodies,
        "peak_mb": round(mix.peak, 1),
        "statuses": dict(statuses),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
