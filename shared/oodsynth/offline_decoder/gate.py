"""The quality gate of a trained decoder: does it draw its classes, the points between them, and real ID images?

A decoder that fails it draws images that read as far-OOD whatever vector they
came from; verification then keeps the farthest, and a detector trained on them
learns the decoder's look instead of the class boundary. So every decoder a
recorded result uses is judged here, on the split it was trained on and at the
decode settings it recommends (the ones the lab and the demo decode with), and
the figures are written into its ``decoder.json`` (``quality``) once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .assets import ProfileAssets, load_profile_assets
from .quality import (
    JudgedDecode,
    accuracy,
    anchor_accuracy,
    midpoint_agreement,
    neighbour_pairs,
    reconstruction_check,
    train_reference_classifier,
)
from .training import METADATA_NAME

# figure -> the least a decoder must reach (the independent CNN's view; ID percentile under a full Gaussian fit)
QUALITY_GATE: dict[str, float] = {
    "anchor_accuracy": 0.95,  # decoded class anchors recognised as their class
    "midpoint_either": 0.90,  # decoded midpoints of neighbouring classes drawn as either class
    "reconstruction_median_id_percentile": 30.0,  # real test features decoded, re-encoded (real images: ~55)
}


def gate_verdict(figures: dict) -> dict:
    """``passed`` and the figures below their bound (``failed``: name -> [figure, bound])."""
    failed = {k: [figures.get(k), bound] for k, bound in QUALITY_GATE.items() if not figures.get(k, -1) >= bound}
    return {"passed": not failed, "failed": failed, "gate": dict(QUALITY_GATE)}


def judge_settings(assets: ProfileAssets) -> JudgedDecode:
    """The decode settings the decoder recommends (``decoder.json``): what its images are drawn with."""
    config = assets.config
    return JudgedDecode(steps=config.decode_steps, guidance_scale=config.guidance_scale, image_size=config.image_size)


def judge_decoder(
    assets: ProfileAssets,
    *,
    settings: JudgedDecode | None = None,
    n_per_class: int = 8,
    classifier_epochs: int = 15,
    keep_images: bool = False,
) -> dict:
    """The gate's figures for ``assets`` on the split it was trained on (its ID classes, train and test sets).

    With ``keep_images`` the decoded anchors and midpoints come back too (``images``: lists of PIL images), for a
    picture of what the figures mean.
    """
    from ..decoding.pipeline import OutlierDecoder
    from ..densities import ClassDensities
    from ..encoding.features import build_bank
    from ..encoding.training import load_encoder

    t0 = time.perf_counter()
    settings = settings or judge_settings(assets)
    split = assets.config.split()
    train, test = split.load("train", settings.image_size), split.load("test", settings.image_size)
    classifier = train_reference_classifier(train, epochs=classifier_epochs)
    encoder = load_encoder(assets.encoder_checkpoint, "cpu")
    bank = build_bank(encoder, train, progress=False)
    means = np.stack([bank.class_features(c).mean(0) for c in range(len(assets.class_names))])
    pairs = neighbour_pairs(means)
    fit = ClassDensities(kind="gaussian_full").fit(bank)
    decoder = OutlierDecoder(assets.decoder_dir, device="cpu", n_slots=64)
    acc, _, anchor_images = anchor_accuracy(decoder, classifier, assets.anchors, settings, n_per_class)
    mid = midpoint_agreement(decoder, classifier, assets.anchors, pairs, settings, n_per_class)
    figures = {
        "split": split.label,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "n_per_class": n_per_class,
        "judge_test_accuracy": accuracy(classifier, test),
        "anchor_accuracy": acc,
        "midpoint_first": mid["first"],
        "midpoint_second": mid["second"],
        "midpoint_either": mid["either"],
        **reconstruction_check(decoder, classifier, encoder, fit, test, settings, n_per_class),
        "pairs": [[assets.class_names[a], assets.class_names[b]] for a, b in pairs],
    }
    figures.update(gate_verdict(figures), judge_s=round(time.perf_counter() - t0, 1))
    if keep_images:
        figures["images"] = {"anchors": anchor_images, "midpoints": mid["images"]}
    return figures


def gate_record(decoder_dir: str | Path, **judge) -> dict:
    """The decoder's ``quality`` entry of ``decoder.json``: judged once at its recommended settings and written
    there, then read back (a decoder's folder is keyed by its content, so the figures never go stale)."""
    decoder_dir = Path(decoder_dir)
    meta_path = decoder_dir / METADATA_NAME
    meta = json.loads(meta_path.read_text())
    if "quality" not in meta:
        meta["quality"] = judge_decoder(load_profile_assets(decoder_dir), **judge)
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(meta_path)
    return meta["quality"]


def gate_line(quality: dict) -> str:
    """One line for a report: the three figures against the gate."""
    mark = "passes" if quality["passed"] else "FAILS"
    return (
        f"{mark} the gate: anchors {quality['anchor_accuracy']:.2f} (>= {QUALITY_GATE['anchor_accuracy']:.2f}), "
        f"midpoints either {quality['midpoint_either']:.2f} (>= {QUALITY_GATE['midpoint_either']:.2f}), "
        f"reconstructions median ID percentile {quality['reconstruction_median_id_percentile']:.1f} "
        f"(>= {QUALITY_GATE['reconstruction_median_id_percentile']:.0f}; real {quality['real_median_id_percentile']:.1f})"
    )
