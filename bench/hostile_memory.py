"""Peak API memory under hostile load: eight heavy requests and a zip-bomb upload at once.

Starts its own embedded Redis and ``uvicorn services.embed_sampler.app:app``
(one process, default settings: the pool of ``OODSYNTH_MAX_HEAVY_REQUESTS``
slots, the size caps), uploads a fit of ``--classes`` classes in 768-d, then:

1. the baseline, measured in the same run: the API's RSS idle with the fit loaded,
   and its peak during ONE heavy request alone;
2. the hostile mix: ``--heavy`` heavy requests (``POST /sample`` of
   ``--n-per-class`` vectors per class over every class, answered as ``.npz``)
   and one zip-bomb upload (a few hundred KB that inflate to several GB under the
   bare member name ``features``) sent together, RSS sampled every 20 ms.

Prints the peaks, their ratio to the baseline, the statuses (200, 429 from the
full pool or the memory budget, 422 for the bomb) and the target (peak under ``--budget-mb``).

    nice -n 10 python bench/hostile_memory.py               # the measured run
    python bench/hostile_memory.py --classes 20 --n-per-class 100 --heavy 4   # smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from load import rss_mb, served_api  # noqa: E402  (bench/load.py: the same server harness)


def heavy_bank(classes: int, per_class: int, dim: int = 768, seed: int = 0) -> bytes:
    from oodsynth.bank import FeatureBank

    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(classes, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), per_class)
    feats = directions[labels] + 0.05 * rng.normal(size=(labels.size, dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    bank = FeatureBank.from_arrays(
        feats.astype(np.float32), labels, (0.38 * directions).astype(np.float32), [f"c{i}" for i in range(classes)]
    )
    return bank.to_bytes()


def zip_bomb(gib: float = 6.0) -> bytes:
    """A bank whose features sit under the bare member name ``features``: a .npy header declaring
    ``gib`` GiB of float32 zeros, then the zeros, deflated (written in chunks: never held whole here)."""
    n = int(gib * 2**30 / (768 * 4))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (n, 768)})
    buf = io.BytesIO()
    chunk = b"\0" * (64 * 2**20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("features", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            left = n * 768 * 4
            while left > 0:
                member.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        for name, value in (("labels", np.zeros(n % 1000 + 2, np.int64)), ("anchors", np.ones((2, 768), np.float32))):
            member = io.BytesIO()
            np.save(member, value)
            z.writestr(f"{name}.npy", member.getvalue())
        member = io.BytesIO()
        np.save(member, np.array(["a", "b"]))
        z.writestr("class_names.npy", member.getvalue())
    return buf.getvalue()


class PeakRSS:
    """Samples the API's RSS every ``every`` seconds in a thread; ``peak`` in MB."""

    def __init__(self, pid: int, every: float = 0.02):
        self.pid, self.every, self.peak = pid, every, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--bank-per-class", type=int, default=100)
    parser.add_argument("--n-per-class", type=int, default=500, help="per class: 100 x 500 = the 50,000-vector cap")
    parser.add_argument("--method", default="inverse_rejection")
    parser.add_argument("--heavy", type=int, default=8)
    parser.add_argument("--bomb-gib", type=float, default=6.0)
    parser.add_argument("--budget-mb", type=float, default=1536)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    bank, bomb = heavy_bank(args.classes, args.bank_per_class), zip_bomb(args.bomb_gib)
    print(f"bank {len(bank) / 2**20:.1f} MB; zip bomb {len(bomb) / 2**20:.2f} MB inflating to {args.bomb_gib} GiB")
    with served_api() as (proc, port):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=600) as client:
            r = client.post("/fits", data={"name": "heavy"}, files={"file": ("b.npz", bank, "application/x-npz")})
            assert r.status_code == 201, r.text
            body = {"fit": "heavy", "method": args.method, "n_per_class": args.n_per_class, "seed": 0}
            client.post("/sample", json={**body, "n_per_class": 1}, params={"format": "npz"})  # warm caches
            time.sleep(1.0)
            idle = rss_mb(proc.pid)
            with PeakRSS(proc.pid) as one:
                start = time.monotonic()
                r = client.post("/sample", json=body, params={"format": "npz"})
                one_s = time.monotonic() - start
            assert r.status_code == 200, r.text[:300]
            time.sleep(1.0)

            def heavy(i: int) -> int:
                return client.post("/sample", json={**body, "seed": i}, params={"format": "npz"}).status_code

            def upload() -> int:
                files = {"file": ("bomb.npz", bomb, "application/octet-stream")}
                return client.post("/fits", data={"name": "bomb"}, files=files).status_code

            with PeakRSS(proc.pid) as mix, ThreadPoolExecutor(args.heavy + 1) as pool:
                start = time.monotonic()
                futures = [pool.submit(upload)] + [pool.submit(heavy, i) for i in range(args.heavy)]
                bomb_status, *heavy_status = [f.result() for f in futures]
                mix_s = time.monotonic() - start
            # The bomb again once the pool is free, so its own check is measured (not only the 429).
            time.sleep(1.0)
            before_bomb = rss_mb(proc.pid)
            with PeakRSS(proc.pid) as alone:
                bomb_alone = upload()
    results = {
        "idle_mb": idle,
        "one_heavy_peak_mb": one.peak,
        "one_heavy_s": one_s,
        "mix_peak_mb": mix.peak,
        "mix_s": mix_s,
        "heavy_statuses": dict(Counter(heavy_status)),
        "bomb_status_in_mix": bomb_status,
        "bomb_alone_status": bomb_alone,
        "bomb_alone_peak_mb": alone.peak,
        "rss_before_bomb_alone_mb": before_bomb,
        "budget_mb": args.budget_mb,
        "settings": vars(args) | {"out": str(args.out) if args.out else None},
    }
    print(
        f"\nAPI RSS: idle {idle:.0f} MB; one heavy /sample ({args.classes} x {args.n_per_class} x 768, "
        f"{args.method}, npz) peak {one.peak:.0f} MB in {one_s:.1f} s"
    )
    print(
        f"{args.heavy} heavy + zip bomb at once: peak {mix.peak:.0f} MB ({mix.peak / idle:.2f}x idle, "
        f"{mix.peak / one.peak:.2f}x one heavy) in {mix_s:.1f} s; heavy statuses {dict(Counter(heavy_status))}, "
        f"bomb {bomb_status}"
    )
    print(
        f"zip bomb alone (pool free): {bomb_alone}, peak {alone.peak:.0f} MB "
        f"({alone.peak - before_bomb:+.0f} MB over the {before_bomb:.0f} MB just before it)"
    )
    verdict = "met" if mix.peak < args.budget_mb else "MISSED"
    print(f"target: peak under {args.budget_mb:.0f} MB: {verdict}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
