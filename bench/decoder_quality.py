"""Does the trained offline decoder draw its classes? Decoded anchors and midpoints, judged by a classifier
trained on real images only.

For each profile: the cached decoder (``ensure_profile_assets``, trained on
first use), a small CNN trained on the profile's real ID training images
(its own test accuracy is printed too), then

- anchor accuracy: share of decoded class anchors (n seeds per class) the CNN
  labels as their class;
- midpoints: each class paired with its nearest class (cosine of the class-mean
  encoder features); the normalised mean of the two anchors is decoded and the
  CNN's label compared with the first class, the second, either;
- reconstructions: the encoder features of real test images decoded back; the
  CNN's accuracy on them and their median re-encoded ID percentile, next to
  that of the real images (a decoder whose own reconstructions look OOD to the
  encoder leaves a shortcut for a detector trained on its outliers).

Writes a JSON record and, with ``--grid``, a PNG: per class column, a real
image, decoded anchors (one row per seed), a decoded midpoint and, with
``--samplers``, two rows of each sampler's decoded outliers.

    python bench/decoder_quality.py                                  # both profiles, default settings
    python bench/decoder_quality.py --profiles digits --guidance 1 2 4 --grid /tmp/grid.png
    python bench/decoder_quality.py --profiles animals --decoder animals=DIR --samplers boundary_crossing sphere_hmc
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oodsynth.data import load_dataset
from oodsynth.decoding.pipeline import OutlierDecoder
from oodsynth.densities import ClassDensities
from oodsynth.encoding.features import build_bank
from oodsynth.encoding.training import load_encoder
from oodsynth.offline_decoder.assets import ensure_profile_assets, load_profile_assets
from oodsynth.offline_decoder.quality import (
    JudgedDecode,
    accuracy,
    anchor_accuracy,
    decode_vectors,
    midpoint_agreement,
    neighbour_pairs,
    reconstruction_check,
    train_reference_classifier,
)

LABEL_WIDTH = 130


def _tile(images: list[list[Image.Image]], scale: int, labels: list[str]) -> Image.Image:
    """Rows of equally sized images -> one grid, enlarged ``scale`` times with nearest-neighbour pixels, each row
    named in a left margin."""
    from PIL import ImageDraw

    h, w = images[0][0].size[1] * scale, images[0][0].size[0] * scale
    grid = Image.new("RGB", (LABEL_WIDTH + w * max(len(r) for r in images), h * len(images)), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(images):
        draw.text((4, i * h + h // 2 - 6), labels[i], fill="black")
        for j, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (LABEL_WIDTH + j * w, i * h))
    return grid


def sampler_rows(
    decoder, fit, bank, settings: JudgedDecode, samplers: list[str], per_class: int
) -> tuple[list[list[Image.Image]], list[str]]:
    """Each sampler's outliers at its default parameters (``per_class`` rows), decoded with the same settings."""
    from oodsynth.samplers import get_sampler

    rows, labels = [], []
    for name in samplers:
        result = get_sampler(name).sample(fit, per_class, seed=0, bank=bank)
        order = np.argsort(result.class_index, kind="stable")
        images = decode_vectors(decoder, result.vectors[order], list(range(len(order))), settings)
        klass = result.class_index[order]
        for r in range(per_class):
            rows.append([images[np.flatnonzero(klass == c)[r]] for c in range(fit.n_classes)])
            labels.append(name if r == 0 else "")
    return rows, labels


def real_examples(data, n_classes: int) -> list[Image.Image]:
    first = {}
    for i in range(len(data)):
        x, y = data.dataset[i]
        first.setdefault(int(y), x)
        if len(first) == n_classes:
            break
    return [
        Image.fromarray((first[c].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for c in range(n_classes)
    ]


def evaluate_profile(profile: str, args) -> tuple[dict, list[list[Image.Image]]]:
    t0 = time.perf_counter()
    if profile in args.decoder:
        assets = load_profile_assets(args.decoder[profile])
    else:
        assets = ensure_profile_assets(profile, args.home, echo=lambda s: print(s, file=sys.stderr))
    train_s = time.perf_counter() - t0
    size = assets.image_size
    train = load_dataset(profile, "train", image_size=size)
    test = load_dataset(profile, "test", image_size=size)
    classifier = train_reference_classifier(train, epochs=args.classifier_epochs)
    record = {
        "profile": profile,
        "decoder_dir": str(assets.decoder_dir),
        "decoder_record": assets.record,
        "ensure_s": round(train_s, 1),
        "classifier_test_accuracy": accuracy(classifier, test),
        "n_per_class": args.n_per_class,
        "settings": [],
    }
    encoder = load_encoder(assets.encoder_checkpoint, "cpu")
    bank = build_bank(encoder, train, progress=False)
    means = np.stack([bank.class_features(c).mean(0) for c in range(len(assets.class_names))])
    pairs = neighbour_pairs(means)
    fit = ClassDensities(kind="gaussian_full").fit(bank)
    decoder = OutlierDecoder(assets.decoder_dir, n_slots=64)
    rows: list[list[Image.Image]] = [real_examples(test, len(assets.class_names))]
    labels = [f"{profile}: real"]
    for guidance in args.guidance:
        settings = JudgedDecode(
            steps=args.steps or assets.config.decode_steps, guidance_scale=guidance, image_size=size
        )
        t1 = time.perf_counter()
        acc, pred, images = anchor_accuracy(decoder, classifier, assets.anchors, settings, args.n_per_class)
        mid = midpoint_agreement(decoder, classifier, assets.anchors, pairs, settings, args.n_per_class)
        recon = reconstruction_check(decoder, classifier, encoder, fit, test, settings, args.n_per_class)
        entry = {
            "steps": settings.steps,
            "guidance_scale": guidance,
            "anchor_accuracy": acc,
            "midpoint_first": mid["first"],
            "midpoint_second": mid["second"],
            "midpoint_either": mid["either"],
            **recon,
            "decode_s": round(time.perf_counter() - t1, 1),
        }
        record["settings"].append(entry)
        print(
            f"{profile:8s} steps {settings.steps:3d} guidance {guidance:4.1f}: decoded anchors correct {acc:.3f}; "
            f"midpoints -> first {mid['first']:.2f}, second {mid['second']:.2f}, either {mid['either']:.2f}; "
            f"reconstructions correct {recon['reconstruction_accuracy']:.3f}, median ID percentile "
            f"{recon['reconstruction_median_id_percentile']:.1f} (real test images "
            f"{recon['real_median_id_percentile']:.1f})",
            flush=True,
        )
        if guidance == args.guidance[0]:
            n = len(assets.class_names)
            rows += [[images[c * args.n_per_class + s] for c in range(n)] for s in range(min(3, args.n_per_class))]
            rows.append([mid["images"][c * args.n_per_class] for c in range(n)])
            labels += ["decoded anchors", "", "", "class midpoint"][: len(rows) - len(labels)]
            if args.samplers:
                more, names = sampler_rows(decoder, fit, bank, settings, args.samplers, 2)
                rows, labels = rows + more, labels + names
    record["pairs"] = [[assets.class_names[a], assets.class_names[b]] for a, b in pairs]
    print(
        f"{profile:8s} judge's accuracy on real test images {record['classifier_test_accuracy']:.3f}; "
        f"decoder training {assets.record.get('total_s', float('nan')):.0f} s "
        f"(this call {train_s:.0f} s incl. cache check)",
        flush=True,
    )
    return record, rows, labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", nargs="+", default=["digits", "animals"])
    parser.add_argument("--n-per-class", type=int, default=8, help="seeds per anchor and per midpoint")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the decoder's)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--home", type=Path, default=None, help="OODSYNTH_HOME for the decoder cache")
    parser.add_argument(
        "--decoder",
        action="append",
        default=[],
        metavar="PROFILE=DIR",
        help="judge this train-decoder folder for PROFILE instead of the cached default (repeatable)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine)")
    parser.add_argument(
        "--samplers",
        nargs="*",
        default=[],
        help="add two grid rows of each named sampler's decoded outliers (default parameters)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--grid", type=Path, default=None, help="PNG: real / decoded anchors / midpoints per profile")
    args = parser.parse_args(argv)
    args.decoder = dict(item.split("=", 1) for item in args.decoder)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    records, grids = [], []
    for profile in args.profiles:
        record, rows, labels = evaluate_profile(profile, args)
        records.append(record)
        grids.append(_tile(rows, 4, labels))
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))
    if args.grid:
        width = max(g.width for g in grids)
        sheet = Image.new("RGB", (width, sum(g.height for g in grids) + 8 * (len(grids) - 1)), "white")
        y = 0
        for g in grids:
            sheet.paste(g, (0, y))
            y += g.height + 8
        sheet.save(args.grid)
        print(f"grid -> {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
