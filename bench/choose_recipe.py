"""Choose the default recipe (which trained row the product recommends) on the dev splits, from cached dev cells.

The rule, fixed before the final draw ran (issue 30: "if the decoded arm still adds nothing after the study, the
default recipe becomes the best recipe without it"): every candidate recipe is summarised by
``bench/ood_gain.py --cached-only`` over both profiles' dev splits x dev seeds, and its figure is the protocol's
weakest target, as in ``choose_defaults.py``: per profile the largest of its paired Δ FPR95 near and far against
CE, near against the best other peer and far against the best post-hoc detector, averaged over the profiles; the
lowest wins. The decoded recipe is one candidate among them, so it stays the default only if it wins. Beside the
figure: the decoded recipe against its ablation (``noise+cutmix``: the same count, its decoded share replaced by
noise and cutmix), paired by split and seed. Test, confirm and final splits are never read.

    R='ce,posthoc:*,decoded:boundary_crossing+verified,noise,cutmix,mixup,vos,npos,noise+cutmix'
    nice -n 10 .venv/bin/python bench/ood_gain.py --splits dev --out OUT --rows "$R" --name dev_recipe_choice
    .venv/bin/python bench/choose_recipe.py --out OUT        # this: no cell runs; writes OUT/choose_recipe.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent / "shared"), str(ROOT.parent), str(ROOT)]

import ood_gain  # noqa: E402

from oodsynth.lab.protocol import load_protocol  # noqa: E402
from oodsynth.lab.rows import DECODED_RECIPE  # noqa: E402

ABLATION = "noise+cutmix"
CANDIDATES = (DECODED_RECIPE, ABLATION, "noise", "cutmix", "mixup", "vos", "npos")
ROWS = ",".join(("ce", "posthoc:*", *CANDIDATES))
TARGET_KEYS = ("delta_near_fpr95", "delta_far_fpr95", "peer_delta_near_fpr95", "posthoc_delta_far_fpr95")


def pct(d: dict | None) -> str:
    if not d:
        return "–"
    return f"{100 * d['mean']:+.1f}" + (f" (t {d['t']:+.1f})" if d.get("t") is not None else "")


def weakest_target(entry: dict) -> float:
    """The largest (worst) of the protocol's four paired Δ FPR95 targets; a missing one counts as a miss."""
    return max(entry[k]["mean"] if entry.get(k) else float("inf") for k in TARGET_KEYS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the dev run's OUT folder (its cells are read)")
    p.add_argument("--profiles", default="animals,digits")
    args = p.parse_args(argv)
    seeds = ",".join(map(str, load_protocol(ood_gain.PROTOCOL).dev_seeds))
    profiles = args.profiles.split(",")
    name = "choose_recipe_cells"
    run = ["--splits", "dev", "--seeds", seeds, "--profiles", args.profiles, "--out", str(args.out)]
    ood_gain.main([*run, "--rows", ROWS, "--against", ABLATION, "--cached-only", "--name", name])
    summary = json.loads((args.out / f"{name}.json").read_text())["summary"]
    header = "| recipe | weakest target Δ (mean over profiles) | " + " | ".join(
        f"{pr} near / far FPR95 | {pr} Δ near, far vs CE | {pr} Δ near vs best other peer | "
        f"{pr} Δ far vs best post-hoc | {pr} Δ near, far vs {ABLATION}"
        for pr in profiles
    )
    lines = [header + " |", "|" + "---|" * (2 + 5 * len(profiles))]
    ranked = []
    for row in CANDIDATES:
        entries = [summary.get(pr, {}).get(row) for pr in profiles]
        if any(e is None for e in entries):
            lines.append(f"| {row} | not run on every profile | " + " | ".join("–" for _ in range(5 * len(profiles))))
            continue
        criterion = sum(weakest_target(e) for e in entries) / len(entries)
        ranked.append((criterion, row))
        cols = []
        for e in entries:
            cols += [
                f"{100 * e['near_fpr95']['mean']:.1f} / {100 * e['far_fpr95']['mean']:.1f}",
                f"{pct(e.get('delta_near_fpr95'))}, {pct(e.get('delta_far_fpr95'))}",
                f"{pct(e.get('peer_delta_near_fpr95'))} ({e.get('best_peer')})",
                f"{pct(e.get('posthoc_delta_far_fpr95'))} ({e.get('best_posthoc')})",
                "–"
                if row == ABLATION
                else f"{pct(e.get('against_delta_near_fpr95'))}, {pct(e.get('against_delta_far_fpr95'))}",
            ]
        lines.append(f"| {row} | {100 * criterion:+.1f} | " + " | ".join(cols) + " |")
    if not ranked:
        print("no candidate has cells on every profile: run the dev cells first (see this script's docstring)")
        return 1
    best = min(ranked)
    text = "\n".join(lines) + f"\n\nWinner: {best[1]} ({100 * best[0]:+.1f})\n"
    (args.out / "choose_recipe.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
