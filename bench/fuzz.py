"""schemathesis against a live API with an admin key: every check, stateful links, a case count to reach.

Starts its own embedded Redis and ``uvicorn services.embed_sampler.app:app``
with API keys on (an admin key is sent with every request), small caps so
each case is quick (the schema states them: ``services/embed_sampler/openapi.py``),
and a fit named after the schema's own example, then runs::

    schemathesis run <api>/openapi.json --checks all --phases examples,coverage,fuzzing,stateful
        -H 'Authorization: Bearer <admin key>' --max-examples N --report ndjson

and prints the cases run, the 5xx answers and the failures per check, from
schemathesis's own NDJSON event stream.

    nice -n 10 python bench/fuzz.py --max-examples 400     # the measured run (CPU-heavy)
    python bench/fuzz.py --max-examples 5                  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))  # tests.helpers: the toy bank the tests use

from load import start_server, stop  # noqa: E402

CONFIG = Path(__file__).with_name("fuzz.toml")  # where the API answers 422 to schema-valid input, and why
SMALL_CAPS = {
    "OODSYNTH_MAX_N_PER_CLASS": "20",
    "OODSYNTH_MAX_VECTORS_PER_SAMPLE": "100",
    "OODSYNTH_SAMPLE_TIME_BUDGET_S": "2",
    "OODSYNTH_MAX_IMAGES_PER_REQUEST": "50",
    "OODSYNTH_MAX_REQUEST_BYTES": str(256 * 1024),
    "OODSYNTH_MAX_UPLOAD_BYTES": str(256 * 1024),
    "OODSYNTH_MAX_HEAVY_REQUESTS": "4",
}


def random_encoder(path: Path, bank) -> Path:
    """A text-aligned encoder checkpoint with random weights (tiny ResNet, 16 px) on the bank's anchors."""
    import torch

    from oodsynth.encoding.encoder import build_encoder
    from oodsynth.encoding.training import EncoderTrainConfig, save_checkpoint

    config = EncoderTrainConfig(arch="resnet10", width=4, image_size=16, epochs=1)
    model = build_encoder(config.arch, bank.dim, width=config.width, mean=config.mean, std=config.std)
    anchors = torch.from_numpy(bank.anchors)
    save_checkpoint(path, model, None, None, config, anchors, [str(n) for n in bank.class_names], 0, [])
    return path


def count_events(path: Path) -> dict:
    """Answered requests and their statuses from schemathesis's NDJSON report."""
    cases, statuses = 0, Counter()
    for line in path.read_text().splitlines():
        event = json.loads(line)
        (kind, body), *_ = event.items()
        if kind != "ScenarioFinished":
            continue
        for interaction in body.get("recorder", {}).get("interactions", {}).values():
            response = interaction.get("response") or {}
            if response:
                cases += 1
                statuses[response.get("status_code")] += 1
    return {"cases": cases, "statuses": dict(statuses)}


def failures_from_summary(stdout: str) -> dict[str, int]:
    """``{"ST202 Schema-valid request rejected": 4, ...}`` from the run's "Failures:" block."""
    found = {}
    for line in stdout.splitlines():
        m = re.match(r"^\s*❌ (ST\d+ .+): (\d+)$", line)
        if m:
            found[m[1]] = int(m[2])
    return found


def generated_from_summary(stdout: str) -> int | None:
    m = re.search(r"(\d+) generated", stdout)
    return int(m[1]) if m else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-time", type=int, default=None, help="seconds for the whole run")
    parser.add_argument("--out", type=Path, help="write the counts as JSON")
    parser.add_argument("--log", type=Path, help="write schemathesis's whole output (every failure, with curl)")
    args = parser.parse_args(argv)

    from oodsynth.api_keys import new_api_key
    from oodsynth.demo import free_port
    from oodsynth.state.redis_conn import start_embedded_redis
    from tests.helpers.toy_banks import toy_bank

    key, entry = new_api_key("admin")
    # The schema's own examples name class "apple" and class index 3 of fit "cifar100".
    bank = toy_bank(n_classes=4, names=["apple", "bee", "cat", "dog"])
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        redis_server = start_embedded_redis(home / "redis")
        port = free_port()
        os.environ.update(SMALL_CAPS)
        # An encoder (random weights, the bank's anchors), so POST /features runs instead of its designed 503.
        os.environ["OODSYNTH_ENCODER_CHECKPOINT"] = str(random_encoder(home / "encoder.pt", bank))
        proc = start_server(home, redis_server.url, entry, port)
        try:
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {key}"}
            r = httpx.post(
                f"{base}/fits",
                headers=auth,
                data={"name": "cifar100"},
                files={"file": ("bank.npz", bank.to_bytes(), "application/octet-stream")},
            )
            assert r.status_code == 201, r.text
            report = home / "events.ndjson"
            command = [
                str(Path(sys.executable).with_name("schemathesis")),
                "--config-file",
                str(CONFIG),
                "run",
                f"{base}/openapi.json",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "-H",
                f"Authorization: Bearer {key}",
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--workers",
                str(args.workers),
                "--request-timeout",
                "30",
                "--continue-on-failure",
                "--report",
                "ndjson",
                "--report-ndjson-path",
                str(report),
                "--output-truncate",
                "true",
            ]
            if args.max_time:
                command += ["--max-time", str(args.max_time)]
            start = time.monotonic()
            run = subprocess.run(command, capture_output=True, text=True)
            took = time.monotonic() - start
            tail = "\n".join(run.stdout.splitlines()[-40:])
            counts = count_events(report)
            if args.log:
                args.log.write_text(run.stdout + run.stderr)
                args.log.with_suffix(".ndjson").write_text(report.read_text())
        finally:
            stop(proc)
            redis_server.stop()
    print(tail)
    counts["failures"] = failures_from_summary(run.stdout)
    counts["generated"] = generated_from_summary(run.stdout)
    fivexx = sum(n for status, n in counts["statuses"].items() if status and int(status) >= 500)
    print(f"\n{' '.join(command[:4])} <api>/openapi.json {' '.join(c for c in command[5:] if 'Bearer' not in c)}")
    print(
        f"cases generated: {counts['generated']}; answered requests: {counts['cases']}; 5xx: {fivexx}; "
        f"failures by check: {counts['failures'] or 0}; "
        f"schemathesis exit {run.returncode}; {took:.0f} s"
    )
    print(f"statuses: {dict(sorted(counts['statuses'].items(), key=lambda kv: str(kv[0])))}")
    if args.out:
        args.out.write_text(json.dumps({**counts, "seconds": took, "exit": run.returncode}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
