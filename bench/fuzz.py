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
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from load import start_server, stop  # noqa: E402

SMALL_CAPS = {
    "OODSYNTH_MAX_N_PER_CLASS": "20",
    "OODSYNTH_MAX_VECTORS_PER_SAMPLE": "100",
    "OODSYNTH_SAMPLE_TIME_BUDGET_S": "2",
    "OODSYNTH_MAX_IMAGES_PER_REQUEST": "50",
    "OODSYNTH_MAX_REQUEST_BYTES": str(256 * 1024),
    "OODSYNTH_MAX_UPLOAD_BYTES": str(256 * 1024),
    "OODSYNTH_MAX_HEAVY_REQUESTS": "4",
}


def count_events(path: Path) -> dict:
    """Cases, statuses and failures from schemathesis's NDJSON report."""
    cases, statuses, failures = 0, Counter(), Counter()
    examples: dict[str, str] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        (kind, body), *_ = event.items()
        if kind != "ScenarioFinished":
            continue
        recorder = body.get("recorder", {})
        for interaction in recorder.get("interactions", {}).values():
            response = interaction.get("response") or {}
            if response:
                cases += 1
                statuses[response.get("status_code")] += 1
        for checks in recorder.get("checks", {}).values():
            for check in checks:
                if check.get("status") == "FAILURE":
                    name = check.get("name")
                    failures[name] += 1
                    failure = check.get("failure_info") or {}
                    examples.setdefault(name, str(failure.get("failure", failure))[:400])
    return {"cases": cases, "statuses": dict(statuses), "failures": dict(failures), "examples": examples}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-time", type=int, default=None, help="seconds for the whole run")
    parser.add_argument("--out", type=Path, help="write the counts as JSON")
    parser.add_argument("--log", type=Path, help="write schemathesis's whole output (every failure, with curl)")
    args = parser.parse_args(argv)

    from toy_banks import toy_bank

    from oodsynth.api_keys import new_api_key
    from oodsynth.demo import free_port
    from oodsynth.state.redis_conn import start_embedded_redis

    key, entry = new_api_key("admin")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        redis_server = start_embedded_redis(home / "redis")
        port = free_port()
        os.environ.update(SMALL_CAPS)
        proc = start_server(home, redis_server.url, entry, port)
        try:
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {key}"}
            r = httpx.post(
                f"{base}/fits",
                headers=auth,
                data={"name": "cifar100"},
                files={"file": ("bank.npz", toy_bank().to_bytes(), "application/octet-stream")},
            )
            assert r.status_code == 201, r.text
            report = home / "events.ndjson"
            command = [
                str(Path(sys.executable).with_name("schemathesis")),
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
        finally:
            stop(proc)
            redis_server.stop()
    print(tail)
    fivexx = sum(n for status, n in counts["statuses"].items() if status and int(status) >= 500)
    print(f"\n{' '.join(command[:2])} <api>/openapi.json {' '.join(c for c in command[3:] if 'Bearer' not in c)}")
    print(
        f"cases (answered requests): {counts['cases']}; 5xx: {fivexx}; failures by check: {counts['failures'] or 0}; "
        f"schemathesis exit {run.returncode}; {took:.0f} s"
    )
    print(f"statuses: {dict(sorted(counts['statuses'].items(), key=lambda kv: str(kv[0])))}")
    for name, example in counts["examples"].items():
        print(f"  first {name}: {example}")
    if args.out:
        args.out.write_text(json.dumps({**counts, "seconds": took, "exit": run.returncode}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
