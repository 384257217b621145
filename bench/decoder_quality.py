"""Does a split's decoder pass the quality gate? And which training lever gets it there at the least cost?

For each split (the protocol's names or explicit holdouts, any of them: the
bank, the judge CNN and the test images all come from the split the decoder was
trained on) or each given decoder folder: the decoder (``ensure_profile_assets``
with the default settings plus ``--set`` overrides, trained on first use and
cached by its content), then ``oodsynth.offline_decoder.gate.judge_decoder``:

- anchor accuracy: decoded class anchors the independent CNN labels as their class;
- midpoints: each class and its nearest class (class-mean features); their normalised mean decoded,
  drawn as either class;
- reconstructions: real test features decoded back, re-encoded: median ID percentile (real images ~55).

The figures are judged at the decoder's recommended decode settings (``--steps`` / ``--guidance``
override) and, at those settings, written into the decoder's ``decoder.json``. Prints one line per decoder
with its training seconds; ``--json`` and ``--grid`` (real images, decoded anchors, midpoints) record it.

    python bench/decoder_quality.py --splits dev-0 --profiles animals                  # the default settings
    python bench/decoder_quality.py --splits dev-0 --profiles animals --set ema_decay=0.999 --set unet_steps=1200
    python bench/decoder_quality.py --decoder DIR --steps 20 --guidance 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from oodsynth.lab.protocol import load_protocol, pick_splits
from oodsynth.offline_decoder.assets import ProfileAssets, ensure_profile_assets, load_profile_assets
from oodsynth.offline_decoder.gate import gate_line, gate_record, judge_decoder, judge_settings
from oodsynth.offline_decoder.training import profile_config

ROOT = Path(__file__).resolve().parents[1]
LABEL_WIDTH = 130


def _tile(rows: list[list[Image.Image]], labels: list[str], scale: int = 4) -> Image.Image:
    """Rows of equally sized images -> one grid, enlarged with nearest-neighbour pixels, rows named on the left."""
    h, w = rows[0][0].size[1] * scale, rows[0][0].size[0] * scale
    grid = Image.new("RGB", (LABEL_WIDTH + w * max(len(r) for r in rows), h * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        draw.text((4, i * h + h // 2 - 6), labels[i], fill="black")
        for j, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (LABEL_WIDTH + j * w, i * h))
    return grid


def _real_examples(assets: ProfileAssets) -> list[Image.Image]:
    test = assets.config.split().load("test", assets.image_size)
    first: dict[int, torch.Tensor] = {}
    for i in range(len(test)):
        x, y = test.dataset[i]
        first.setdefault(int(y), x)
        if len(first) == len(assets.class_names):
            break
    return [Image.fromarray((first[c].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for c in sorted(first)]


def grid_rows(assets: ProfileAssets, figures: dict, n_per_class: int, title: str) -> tuple[list, list[str]]:
    n = len(assets.class_names)
    anchors, mids = figures["images"]["anchors"], figures["images"]["midpoints"]
    rows = [_real_examples(assets)]
    rows += [[anchors[c * n_per_class + s] for c in range(n)] for s in range(min(3, n_per_class))]
    rows.append([mids[c * n_per_class] for c in range(n)])
    return rows, [f"{title}: real", "decoded anchors", "", "", "class midpoint"][: len(rows)]


def decoders(args) -> list[ProfileAssets]:
    if args.decoder:
        return [load_profile_assets(d) for d in args.decoder]
    protocol = load_protocol(args.protocol)
    out = []
    for split in pick_splits(args.splits, args.profiles, protocol):
        config = profile_config(split.profile, split.holdout, **args.overrides)
        out.append(
            ensure_profile_assets(split.profile, args.home, config=config, echo=lambda s: print(s, file=sys.stderr))
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", default="dev-0", help="protocol names or PROFILE:word+word (ood_gain's --splits)")
    parser.add_argument("--profiles", nargs="+", default=["animals", "digits"])
    parser.add_argument("--protocol", type=Path, default=ROOT / "bench" / "protocol" / "splits.toml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="decoder training override")
    parser.add_argument("--decoder", action="append", default=[], help="judge this decoder folder (repeatable)")
    parser.add_argument("--n-per-class", type=int, default=8, help="seeds per anchor, midpoint and reconstruction")
    parser.add_argument("--steps", type=int, default=None, help="decode steps (default: the decoder's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the decoder's)")
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--home", type=Path, default=None, help="OODSYNTH_HOME for the decoder cache")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--grid", type=Path, default=None, help="PNG: real / decoded anchors / midpoints per decoder")
    args = parser.parse_args(argv)
    args.overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.threads:
        torch.set_num_threads(args.threads)
    records, grids = [], []
    for assets in decoders(args):
        settings = judge_settings(assets)
        custom = args.steps is not None or args.guidance is not None
        settings.steps = args.steps or settings.steps
        settings.guidance_scale = settings.guidance_scale if args.guidance is None else args.guidance
        judge = {"n_per_class": args.n_per_class, "classifier_epochs": args.classifier_epochs}
        figures = judge_decoder(assets, settings=settings, keep_images=bool(args.grid), **judge)
        if not custom:  # at the recommended settings: the decoder's own record
            gate_record(assets.decoder_dir, **judge)
        title = f"{figures['split']} ({assets.decoder_dir.name})"
        print(
            f"{title}: {gate_line(figures)}; steps {settings.steps}, guidance {settings.guidance_scale}; "
            f"judge on real test images {figures['judge_test_accuracy']:.3f}; decoder training "
            f"{assets.record.get('total_s', float('nan')):.0f} s wall, {assets.record.get('total_cpu_s', float('nan')):.0f}"
            f" CPU-s",
            flush=True,
        )
        if args.grid:
            rows, labels = grid_rows(assets, figures, args.n_per_class, figures["split"])
            grids.append(_tile(rows, labels))
        figures.pop("images", None)
        records.append(
            {
                "decoder": assets.decoder_dir.name,
                "config": assets.config.model_dump(mode="json"),
                "training": assets.record,
                "quality": figures,
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2))
    if args.grid:
        sheet = Image.new("RGB", (max(g.width for g in grids), sum(g.height + 8 for g in grids)), "white")
        y = 0
        for g in grids:
            sheet.paste(g, (0, y))
            y += g.height + 8
        sheet.save(args.grid)
        print(f"grid -> {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
