"""Choose the default recipe's test-time score and outlier mix on the dev splits, from cached dev cells.

    nice -n 10 .venv/bin/python bench/ood_gain.py --splits dev --out OUT \
        --rows 'ce,posthoc:*,decoded:boundary_crossing+verified,noise,vos,npos,mixup,cutmix' \
        --set mixing_share=0 --versus noise_share=0.5                     # the dev cells (every score in each)
    D='ce,decoded:boundary_crossing+verified,cutmix'                   # two more outlier mixes, likewise:
    nice -n 10 .venv/bin/python bench/ood_gain.py --splits dev --out OUT --rows "$D" --set mixing_share=0 \
        --versus mixing_share=0.5
    nice -n 10 .venv/bin/python bench/ood_gain.py --splits dev --out OUT --rows "$D" --set mixing_share=0 \
        --versus noise_share=0.25 --versus mixing_share=0.25
    .venv/bin/python bench/choose_defaults.py --out OUT                        # this: no cell runs

Every candidate (``test_score`` x outlier mix: ``noise_share``, ``mixing_share``) is summarised by
``bench/ood_gain.py --cached-only`` over both profiles' dev splits x dev seeds: a trained cell holds every score of
``LAB_SCORES``, so a candidate score costs no training. A candidate's figure is the default recipe's weakest
target: per profile the largest of its paired Δ FPR95 near and far against CE, near against the best peer and far
against the best post-hoc detector (the protocol's targets: a gain on one that costs another is no gain), averaged
over the profiles; the lowest wins. The weaker side against CE alone is shown beside it.
Test splits are never read. Prints one markdown table (also OUT/choose_defaults.md) and the winner.
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
from oodsynth.lab.settings import LAB_SCORES  # noqa: E402

ROWS = "ce,posthoc:*,decoded:boundary_crossing+verified,noise,vos,npos,mixup,cutmix"
# every outlier mix that ran on the dev splits, each share given (the defaults move with the winner)
MIXES = (
    "noise_share=0,mixing_share=0",
    "noise_share=0.5,mixing_share=0",
    "noise_share=0,mixing_share=0.5",
    "noise_share=0.25,mixing_share=0.25",
)


def pct(d: dict | None, key: str = "mean") -> str:
    return "–" if not d else f"{100 * d[key]:+.1f}" + (f" (t {d['t']:+.1f})" if d.get("t") is not None else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the dev run's OUT folder (its cells are read)")
    p.add_argument("--profiles", default="animals,digits")
    p.add_argument(
        "--mixes",
        default=";".join(MIXES),
        help="the outlier mixes that were run: ';'-separated, each ','-separated KEY=VALUE settings",
    )
    args = p.parse_args(argv)
    seeds = ",".join(map(str, load_protocol(ood_gain.PROTOCOL).dev_seeds))
    profiles = args.profiles.split(",")
    lines = [
        "| test_score | outlier mix | weakest target Δ | weaker-side Δ vs CE | "
        + " | ".join(
            f"{pr} near / far FPR95 | {pr} Δ near, far vs CE | {pr} Δ near vs best peer | {pr} Δ far vs best post-hoc"
            for pr in profiles
        )
        + " |",
        "|" + "---|" * (4 + 4 * len(profiles)),
    ]
    ranked = []
    for score in ("energy", *LAB_SCORES):
        for mix in args.mixes.split(";"):
            name = f"choose_{score}_{mix.replace('=', '').replace(',', '_')}"
            argv_ = ["--splits", "dev", "--seeds", seeds, "--profiles", args.profiles, "--out", str(args.out)]
            argv_ += ["--rows", ROWS, "--cached-only", "--name", name]
            argv_ += ["--set", f"test_score={score}"] + [a for kv in mix.split(",") for a in ("--set", kv)]
            ood_gain.main(argv_)
            summary = json.loads((args.out / f"{name}.json").read_text())["summary"]
            cols, figures, versus_ce = [], [], []
            for pr in profiles:
                e = summary[pr][DECODED_RECIPE]
                near, far = e["near_fpr95"]["mean"], e["far_fpr95"]["mean"]
                versus_ce.append(max(e["delta_near_fpr95"]["mean"], e["delta_far_fpr95"]["mean"]))
                targets = ("delta_near_fpr95", "delta_far_fpr95", "peer_delta_near_fpr95", "posthoc_delta_far_fpr95")
                figures.append(max(e[k]["mean"] for k in targets if e.get(k)))
                cols += [
                    f"{100 * near:.1f} / {100 * far:.1f}",
                    f"{pct(e.get('delta_near_fpr95'))}, {pct(e.get('delta_far_fpr95'))}",
                    pct(e.get("peer_delta_near_fpr95")) + f" ({e.get('best_peer')})",
                    pct(e.get("posthoc_delta_far_fpr95")) + f" ({e.get('best_posthoc')})",
                ]
            criterion, ce_side = sum(figures) / len(figures), sum(versus_ce) / len(versus_ce)
            ranked.append((criterion, score, mix))
            lines.append(
                f"| {score} | {mix} | {100 * criterion:+.1f} | {100 * ce_side:+.1f} | " + " | ".join(cols) + " |"
            )
    best = min(ranked)
    text = "\n".join(lines) + f"\n\nWinner: test_score={best[1]}, {best[2]} ({100 * best[0]:+.1f})\n"
    (args.out / "choose_defaults.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
