"""The OOD-gain benchmark: does training with oodsynth's outliers make a better OOD detector?

    .venv/bin/python bench/ood_gain.py --out bench-results/ood_gain            # 5 seeds, both profiles, all rows
    .venv/bin/python bench/ood_gain.py --quick --out /tmp/ood_gain_quick      # 2 seeds, short training: a check
    .venv/bin/python bench/ood_gain.py --list-rows
    .venv/bin/python bench/ood_gain.py --rows ce,noise,'decoded:*' --profiles animals --seeds 0-4 --out DIR
    .venv/bin/python bench/ood_gain.py --rows 'decoded:boundary_crossing+verified' --set outlier_ratio=1.0 \
        --versus outlier_ratio=0.5 ...                                        # one setting against another, paired
    .venv/bin/python bench/ood_gain.py --rows 'decoded:boundary_crossing+verified' \
        --against 'decoded:class_interpolation+verified' ...                  # one row against another, paired

Each cell (profile, row, seed) trains a small detector end to end (CE + beta *
L_ood, ``oodsynth.lab``) and measures near-OOD (held-out classes) and far-OOD
FPR95 / AUROC. Every cell is cached in OUT/cells, so a rerun resumes and a
new row costs only its own cells. The generation side (encoder, fit, trained
decoder) is built once per profile (``ensure_profile_assets``) and cached;
decoded outlier pools are cached per (sampler, seed) in OUT/cache.

Writes OUT/results.json (every cell and the summary), OUT/results.md (one
table per profile) and OUT/results.png (bars with std error bars), after
every cell, so partial results survive an interruption (``--name`` renames
them, e.g. for a threshold sweep that shares the cached cells).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """``5`` -> 0..4 (a count); ``0-4`` -> 0..4; ``1,3,7`` -> those; ``5-9,15-24`` -> both ranges."""
    try:
        if "," not in text and "-" not in text:
            return list(range(int(text)))
        seeds = []
        for part in text.split(","):
            a, _, b = part.partition("-")
            seeds += list(range(int(a), int(b or a) + 1))
        return seeds
    except ValueError:
        raise SystemExit(f"error: --seeds {text!r}: give a count (5), a range (0-4) or a list (0,2,5-9)") from None


def parse_settings(items: list[str]) -> dict:
    """``KEY=VALUE`` items as lab-setting overrides: VALUE as JSON, else as a plain string (arch, density)."""
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def pick_rows(patterns: str | None, known: list[str]) -> list[str]:
    """Rows matching comma-separated names or globs (``decoded:*``), in registry order."""
    if not patterns:
        return known
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    unmatched = [p for p in wanted if not fnmatch.filter(known, p)]
    if unmatched:
        raise SystemExit(f"error: rows: {unmatched} match no row; known rows: {', '.join(known)}")
    return [r for r in known if any(fnmatch.fnmatchcase(r, p) for p in wanted)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-results/ood_gain"))
    p.add_argument("--profiles", default="animals,digits", help="comma-separated: animals, digits")
    p.add_argument("--seeds", default="5", help="a count (5 = seeds 0..4), a range 0-4, or a list 0,2,5")
    p.add_argument("--rows", default=None, help="comma-separated row names or globs (default: all)")
    p.add_argument("--quick", action="store_true", help="2 seeds, 2 epochs, outlier_ratio 0.1: a check")
    p.add_argument("--list-rows", action="store_true")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: measured 7x faster per step than 2 on a busy 2-core machine)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a lab setting (repeatable): epochs, beta, outlier_ratio, max_id_percentile, "
        "width, decode (JSON), ...",
    )
    p.add_argument(
        "--versus",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also run every row these settings change with them (repeatable; over --set) and pair each "
        "row with that twin by seed, e.g. --set outlier_ratio=1.0 --versus outlier_ratio=0.5",
    )
    p.add_argument(
        "--against",
        metavar="ROW",
        help="also run ROW and pair every other row with it by seed (row - ROW), e.g. --against "
        "'decoded:class_interpolation+verified': one sampler head to head with another",
    )
    p.add_argument(
        "--decoder",
        action="append",
        default=[],
        metavar="PROFILE=DIR",
        help="use this train-decoder folder for PROFILE instead of ensure_profile_assets (repeatable)",
    )
    p.add_argument("--cached-only", action="store_true", help="summarise the cached cells, run nothing")
    p.add_argument("--name", default="results", help="result files OUT/NAME.{json,md,png} (cells are shared)")
    args = p.parse_args(argv)

    import torch

    from oodsynth.lab import QUICK, LabSettings, lab_rows, profile_assets, run_benchmark

    rows = lab_rows()
    if args.list_rows:
        for r in rows.values():
            print(f"{r.name:38s} paired with {r.baseline or '-':8s} {r.description}")
        return 0
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # BLAS too: spinning OpenBLAS threads make the fit's SVDs many times slower here
    overrides = {**(QUICK if args.quick else {}), **parse_settings(args.set)}
    settings = LabSettings(**overrides)
    versus = None
    if args.versus:
        versus = (", ".join(args.versus), LabSettings(**{**overrides, **parse_settings(args.versus)}))
    seeds = parse_seeds("2" if args.quick and args.seeds == "5" else args.seeds)
    profiles = [s.strip() for s in args.profiles.split(",") if s.strip()]
    cache = args.out / "assets"
    decoders = dict(item.split("=", 1) for item in args.decoder)
    loaded: dict = {}

    def assets_for(profile: str):
        def get():
            if profile not in loaded:
                loaded[profile] = profile_assets(profile, cache, settings.density, decoders.get(profile))
            return loaded[profile]

        return get

    results = run_benchmark(
        profiles,
        pick_rows(args.rows, list(rows)),
        seeds,
        settings,
        args.out,
        assets_for,
        log=lambda line: print(line, flush=True),
        name=args.name,
        cached_only=args.cached_only,
        versus=versus,
        against=args.against,
    )
    print((args.out / f"{args.name}.md").read_text())
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
