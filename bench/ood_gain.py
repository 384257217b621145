"""The OOD-gain benchmark: does training with oodsynth's outliers make a better OOD detector?

    .venv/bin/python bench/ood_gain.py --out bench-results/ood_gain            # the protocol: test splits x test seeds
    .venv/bin/python bench/ood_gain.py --quick --out /tmp/ood_gain_quick      # one split, one seed, short: a check
    .venv/bin/python bench/ood_gain.py --list-rows
    .venv/bin/python bench/ood_gain.py --splits dev --seeds 0-2 --rows ce,noise,'decoded:*' --out DIR   # tuning
    .venv/bin/python bench/ood_gain.py --splits animals:cat+cow+dog,test-0 --profiles animals --seeds 71 ...
    .venv/bin/python bench/ood_gain.py --rows 'decoded:boundary_crossing+verified' --set outlier_ratio=1.0 \
        --versus outlier_ratio=0.5 ...                                        # one setting against another, paired
    .venv/bin/python bench/ood_gain.py --rows 'decoded:boundary_crossing+verified' \
        --against 'decoded:class_interpolation+verified' ...                  # one row against another, paired

A split is (profile, held-out classes). ``bench/protocol/splits.toml`` names
each profile's dev splits (defaults may be tuned there) and test splits (drawn
at random with a fixed seed, fixed before their results) and the test seeds;
``--splits`` picks from it (``test``, ``dev``, ``test-2``), names a holdout
(``animals:cat+cow+dog``) or draws fresh ones (``draw:4``). Each cell (split,
row, seed) trains a small detector end to end (CE + beta * L_ood,
``oodsynth.lab``) and measures near-OOD (held-out classes) and far-OOD
FPR95 / AUROC. Every cell is cached in OUT/cells, keyed by the split, so a
rerun resumes and a new row costs only its own cells. The generation side
(encoder, fit, trained decoder) is built once per split and cached; decoded
outlier pools are cached per (split, sampler, seed) in OUT/cache.

Writes OUT/results.json (every cell, the summary, the code's git commit and
the protocol file's hash), OUT/results.md (the pooled report per profile and
a per-split breakdown) and OUT/results.png, after every cell, so partial
results survive an interruption (``--name`` renames them).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from pathlib import Path

PROTOCOL = Path(__file__).parent / "protocol" / "splits.toml"
REPO = Path(__file__).resolve().parents[1]


def repo_relative(path: Path) -> str:
    """``path`` as the results record it: relative to the repository when inside it (the same on every clone)."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def parse_seeds(text: str) -> list[int]:
    """``71`` -> [71]; ``70-72`` -> 70..72; ``0,2,5`` -> those; ``5-9,15-24`` -> both ranges. (A count of seeds
    is ``--n-seeds``.)"""
    try:
        seeds = []
        for part in text.split(","):
            a, sep, b = part.strip().partition("-")
            if sep and not b:
                raise ValueError(part)
            lo, hi = int(a), int(b or a)
            if lo < 0 or hi < lo:
                raise ValueError(part)
            seeds += list(range(lo, hi + 1))
        return list(dict.fromkeys(seeds))
    except ValueError:
        raise SystemExit(
            f"error: --seeds {text!r}: give seeds: one (71), a range (70-72) or a list (0,2,5-9); "
            "a count of seeds is --n-seeds"
        ) from None


def parse_settings(items: list[str]) -> dict:
    """``KEY=VALUE`` items as lab-setting overrides: VALUE as JSON, else as a plain string (arch, density)."""
    from oodsynth.service.assignments import read_value

    return {key: read_value(value) for key, _, value in (item.partition("=") for item in items)}


def pick_rows(patterns: str | None, known: list[str]) -> list[str]:
    """Rows matching comma-separated names or globs (``decoded:*``), in the order given (a glob's rows in registry
    order): each (split, seed) runs its rows in this order, so an interrupted run has the first ones."""
    if not patterns:
        return known
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    unmatched = [p for p in wanted if not fnmatch.filter(known, p)]
    if unmatched:
        raise SystemExit(f"error: rows: {unmatched} match no row; known rows: {', '.join(known)}")
    return list(dict.fromkeys(r for p in wanted for r in known if fnmatch.fnmatchcase(r, p)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-results/ood_gain"))
    p.add_argument("--profiles", default="animals,digits", help="comma-separated: animals, digits")
    p.add_argument(
        "--splits",
        default="test",
        help="comma-separated: test, dev (the protocol's groups), test-0, dev-1 (by name), default, "
        "draw:N[@SEED] (N random holdouts), PROFILE:word+word (an explicit holdout)",
    )
    p.add_argument("--protocol", type=Path, default=PROTOCOL, help="the protocol file (splits and seeds)")
    p.add_argument(
        "--seeds",
        default=None,
        help="seeds: 71, a range 70-72, or a list 0,2,5-9 (default: the protocol's dev seeds when only dev splits "
        "run, else its test seeds)",
    )
    p.add_argument("--n-seeds", type=int, default=None, help="seeds 0..N-1 instead of --seeds")
    p.add_argument("--rows", default=None, help="comma-separated row names or globs (default: all)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a check: one split (animals' default), seed 0, rows ce, noise and the default recipe, short training",
    )
    p.add_argument("--list-rows", action="store_true")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads. Default 1 (measured 7x faster per step than 2 on a busy 2-core machine, and the "
        "thread count the recorded cells ran with: float sums, so a cell's figures depend on it); --quick "
        "defaults to every core (a check, not a recorded figure: 165-174 s from nothing on 2 idle cores, 295 s on one)",
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
        metavar="SPLIT=DIR",
        help="use this train-decoder folder (trained on that split) for SPLIT (animals:dog+horse+sheep; a bare "
        "profile: its default split) instead of ensure_profile_assets (repeatable)",
    )
    p.add_argument("--cached-only", action="store_true", help="summarise the cached cells, run nothing")
    p.add_argument("--name", default="results", help="result files OUT/NAME.{json,md,png} (cells are shared)")
    args = p.parse_args(argv)

    import torch

    from oodsynth.data import ProfileSplit
    from oodsynth.lab import (
        DECODED_RECIPE,
        DEFAULT_ROW,
        QUICK,
        LabSettings,
        RunOptions,
        lab_rows,
        profile_assets,
        run_benchmark,
    )
    from oodsynth.lab.protocol import TEST_GROUPS, git_state, load_protocol, pick_splits

    rows = lab_rows()
    if args.list_rows:
        for r in rows.values():
            print(f"{r.name:38s} paired with {r.baseline or '-':8s} {r.description}")
        return 0
    if args.seeds is not None and args.n_seeds is not None:
        raise SystemExit("error: give --seeds or --n-seeds, not both")
    protocol = load_protocol(args.protocol)
    profiles = [s.strip() for s in args.profiles.split(",") if s.strip()]
    if args.quick:
        splits = pick_splits("animals:" + "+".join(ProfileSplit.default("animals").words), profiles, protocol)
        seeds, row_names = [0], list(dict.fromkeys(["ce", "noise", DECODED_RECIPE, DEFAULT_ROW]))
    else:
        splits = pick_splits(args.splits, profiles, protocol)
        # the dev splits' own seeds when only dev splits run (tuning never touches a test seed), else the test seeds
        only_dev = all(str(split.name).startswith("dev") for split in splits)
        seeds = protocol.dev_seeds if only_dev else protocol.test_seeds
        if args.n_seeds is not None:
            seeds = list(range(args.n_seeds))
        if args.seeds is not None:
            seeds = parse_seeds(args.seeds)
        row_names = pick_rows(args.rows, list(rows))
    threads = args.threads or ((os.cpu_count() or 1) if args.quick else 1)
    torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)  # BLAS too: spinning OpenBLAS threads slow the fit many times
    overrides = {**(QUICK if args.quick else {}), **parse_settings(args.set)}
    settings = LabSettings(**overrides)
    versus = None
    if args.versus:
        versus = (", ".join(args.versus), LabSettings(**{**overrides, **parse_settings(args.versus)}))
    cache = args.out / "assets"
    decoders = {}
    for item in args.decoder:
        where, _, folder = item.partition("=")
        split = ProfileSplit.parse(where)
        decoders[(split.profile, split.holdout)] = Path(folder)
    loaded: dict = {}

    class SplitAssets:
        """The split's assets, built on first call; ``tag`` (the decoder folder's name) is known before."""

        def __init__(self, split: ProfileSplit):
            self.split = split
            folder = decoders.get((split.profile, split.holdout))
            self.tag = folder.name if folder else cache_path(profile_config(split.profile, split.holdout), home).name
            self.folder = folder

        def __call__(self):
            if self.split.key not in loaded:
                loaded[self.split.key] = assets = profile_assets(self.split, cache, settings.density, self.folder)
                if assets.decoder_dir is not None:  # every decoder a recorded result uses is judged by the gate
                    meta.setdefault("decoders", {})[self.split.label] = {
                        "decoder": assets.decoder_dir.name,
                        **gate_record(assets.decoder_dir),
                    }
            return loaded[self.split.key]

    from oodsynth.config import get_settings
    from oodsynth.offline_decoder.assets import cache_path
    from oodsynth.offline_decoder.gate import gate_record
    from oodsynth.offline_decoder.training import profile_config

    home = get_settings().home
    assets_for = SplitAssets

    # the test draws (test, confirm, final) only report; a run on them alone is a protocol result
    tested = {s.label for p in protocol.splits.values() for g in TEST_GROUPS for s in p[g]}
    meta = {
        **git_state(Path(__file__).parent),
        "protocol": repo_relative(args.protocol),
        "protocol_sha": protocol.sha,
        "splits": [{"label": s.label, "name": s.name, "key": s.key} for s in splits],
        "seeds": seeds,
        "torch_threads": threads,  # the figures of cells run now depend on it (float sums)
        "test_only": all(s.label in tested for s in splits),
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    options = RunOptions(
        name=args.name,
        cached_only=args.cached_only,
        versus=versus,
        against=args.against,
        meta=meta,
        log=lambda line: print(line, flush=True),
    )
    results = run_benchmark(splits, row_names, seeds, settings, args.out, assets_for, options)
    print((args.out / f"{args.name}.md").read_text())
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
