"""The OOD-gain benchmark: does training with oodsynth's outliers make a better OOD detector?

    .venv/bin/python bench/ood_gain.py --out bench-results/ood_gain            # 5 seeds, both profiles, all rows
    .venv/bin/python bench/ood_gain.py --quick --out /tmp/ood_gain_quick      # 2 seeds, short training: a check
    .venv/bin/python bench/ood_gain.py --list-rows
    .venv/bin/python bench/ood_gain.py --rows ce,noise,'decoded:*' --profiles animals --seeds 0-4 --out DIR

Each cell (profile, row, seed) trains a small detector end to end (CE + beta *
L_ood, ``oodsynth.lab``) and measures near-OOD (held-out classes) and far-OOD
FPR95 / AUROC. Every cell is cached in OUT/cells, so a rerun resumes and a
new row costs only its own cells. The generation side (encoder, fit, trained
decoder) is built once per profile (``ensure_profile_assets``) and cached;
decoded outlier pools are cached per (sampler, seed) in OUT/cache.

Writes OUT/results.json (every cell and the summary), OUT/results.md (one
table per profile) and OUT/ood_gain.png (bars with std error bars), after
every cell, so partial results survive an interruption.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """``5`` -> 0..4; ``0-4`` -> 0..4; ``1,3,7`` -> those."""
    if "," in text:
        return [int(t) for t in text.split(",")]
    if "-" in text:
        a, b = (int(t) for t in text.split("-"))
        return list(range(a, b + 1))
    return list(range(int(text)))


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
    p.add_argument("--quick", action="store_true", help="2 seeds, 2 epochs, 40 outliers per class: a check")
    p.add_argument("--list-rows", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a lab setting (repeatable): epochs, beta, n_per_class, max_id_percentile, width, ...")
    p.add_argument("--assets-cache", type=Path, default=None, help="where fits are cached (default OUT/assets)")
    args = p.parse_args(argv)

    import torch

    from oodsynth.lab import QUICK, LabSettings, lab_rows, markdown_table, profile_assets, run_cell, summarise
    from oodsynth.plots import plot_ood_gain

    rows = lab_rows()
    if args.list_rows:
        for r in rows.values():
            print(f"{r.name:32s} paired with {r.baseline or '-':8s} {r.description}")
        return 0
    torch.set_num_threads(args.threads)
    overrides = dict(QUICK) if args.quick else {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "[{" or value.replace(".", "", 1).lstrip("-").isdigit() \
            else value
    settings = LabSettings(**overrides)
    seeds = parse_seeds("2" if args.quick and args.seeds == "5" else args.seeds)
    profiles = [s.strip() for s in args.profiles.split(",") if s.strip()]
    chosen = pick_rows(args.rows, list(rows))
    # every row's baseline runs too, or its paired difference would be missing
    chosen = list(dict.fromkeys([b for r in chosen if (b := rows[r].baseline)] + chosen))
    args.out.mkdir(parents=True, exist_ok=True)
    assets_cache = args.assets_cache or args.out / "assets"
    loaded: dict[str, object] = {}

    def assets_for(profile: str):
        def get():
            if profile not in loaded:
                loaded[profile] = profile_assets(profile, assets_cache, settings.density)
            return loaded[profile]
        return get

    cells, failures = [], []
    total = len(profiles) * len(chosen) * len(seeds)
    print(f"settings {settings.key()}: {settings.model_dump()}\n{total} cells: profiles {profiles}, seeds {seeds}, "
          f"rows {chosen}", flush=True)
    t0 = time.perf_counter()
    done = 0
    for profile in profiles:
        for seed in seeds:
            for name in chosen:
                done += 1
                try:
                    c = run_cell(profile, rows[name], seed, settings, args.out, assets_for(profile))
                except Exception as exc:  # one broken row must not lose the others; it is reported
                    failures.append({"profile": profile, "row": name, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
                    print(f"[{done}/{total}] {profile} {name} seed {seed}: FAILED {failures[-1]['error']}", flush=True)
                    continue
                cells.append(c)
                print(f"[{done}/{total}] {profile} {name} seed {seed}: near FPR95 {100 * c['near_fpr95']:.1f} "
                      f"far FPR95 {100 * c['far_fpr95']:.1f} ID acc {100 * c['id_accuracy']:.1f} "
                      f"({c['seconds']:.0f} s; {time.perf_counter() - t0:.0f} s total)", flush=True)
                write_results(args.out, settings, cells, failures, summarise, markdown_table, plot_ood_gain)
    write_results(args.out, settings, cells, failures, summarise, markdown_table, plot_ood_gain)
    print((args.out / "results.md").read_text())
    return 1 if failures else 0


def write_results(out: Path, settings, cells, failures, summarise, markdown_table, plot_ood_gain) -> None:
    if not cells:
        return
    summary = summarise(cells)
    slim = [{k: v for k, v in c.items() if k != "report"} for c in cells]
    (out / "results.json").write_text(json.dumps({"settings": settings.model_dump(), "summary": summary,
                                                  "cells": slim, "failures": failures}, indent=1))
    md = [f"# OOD gain (settings {settings.key()})", "",
          "Percent; mean ± std over seeds; Δ = paired per-seed difference to the row's baseline (CE only unless "
          "named), t = mean / standard error.", ""]
    for profile in summary:
        md += [f"## {profile}", "", markdown_table(summary, profile), ""]
    if failures:
        md += ["## failed cells", ""] + [f"- {f['profile']} {f['row']} seed {f['seed']}: {f['error']}" for f in failures]
    (out / "results.md").write_text("\n".join(md) + "\n")
    plot_ood_gain(summary, out / "ood_gain.png")


if __name__ == "__main__":
    sys.exit(main())
