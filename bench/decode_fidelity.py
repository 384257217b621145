"""Fidelity of the decode presets: ``fast`` against ``exact`` on the same vectors and seeds, on CPU.

Two measurements, each variant against ``exact`` in the same run:

1. The trained animals decoder (``ensure_profile_assets("animals")``, its own
   settings: DDIM, 20 steps, guidance 2, 16²):
   - anchor accuracy: an independent CNN trained on real images only
     (``oodsynth.offline_decoder.quality``) labels decoded class anchors; the paired
     difference to exact comes with a 95 % interval from the discordant pairs;
   - decoded outliers (``boundary_crossing`` vectors of a ``gaussian_full``
     fit of the encoder's ID features) re-encoded by the text-aligned encoder
     (``oodsynth.decoding.verification``): their ID-percentile distribution.
2. The random-weight tiny SD v1.x pipeline of the tests (``make_tiny_pipeline``),
   DREAM-OOD settings (PNDM, 50 steps, CFG 7.5): the relative L2 distance of the
   final latents to exact's, ||z - z_exact|| / ||z_exact||, beside two yardsticks
   (exact at half the steps; exact with other seeds, i.e. unrelated images).

Besides ``exact`` and ``fast``, two ablations say which lever costs what:
``dpm-half`` (DPM-Solver++ at half the steps, no reuse) and ``reuse-only``
(the job's solver and steps, fast's feature reuse); ``fast-reuse-3`` is the
first candidate for ``fast`` (full UNet every 3rd step), kept for the record.

    nice -n 10 .venv/bin/python bench/decode_fidelity.py --threads 1 --out bench/results/decode_presets/decode_presets.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from oodsynth.decoding.pipeline import OutlierDecoder
from oodsynth.decoding.presets import PRESETS
from oodsynth.offline_decoder.quality import pil_to_tensor, predict, train_reference_classifier

OTHER_SEEDS = "yardstick: exact, other seeds"
FAST = PRESETS["fast"]
VARIANTS = {
    "exact": PRESETS["exact"],
    "fast": FAST,
    "dpm-half": replace(FAST, name="dpm-half", cache_interval=1),
    "reuse-only": replace(FAST, name="reuse-only", scheduler=None, step_fraction=1.0),
    "fast-reuse-3": replace(FAST, name="fast-reuse-3", cache_interval=3),
}


def paired_difference(correct: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Accuracy difference (points) of paired 0/1 outcomes and its 95 % half-width (normal, from the discordant pairs)."""
    d = correct.astype(float) - reference.astype(float)
    return 100 * d.mean(), 100 * 1.96 * d.std(ddof=1) / np.sqrt(len(d))


def animals(args) -> dict:
    from oodsynth.data import load_profile_split
    from oodsynth.decoding.verification import verify_images
    from oodsynth.lab import profile_assets
    from oodsynth.samplers import get_sampler

    assets = profile_assets("animals", args.cache)
    size = assets.encoder.config.image_size
    train = load_profile_split("animals", "train", image_size=size)
    t0 = time.perf_counter()
    judge = train_reference_classifier(train, epochs=args.classifier_epochs)
    judge_s = time.perf_counter() - t0
    decoder = OutlierDecoder(assets.decoder_dir, device="cpu", n_slots=64)
    settings = {**assets.decode, "output_size": None}

    n_classes = len(assets.anchors)
    labels = np.repeat(np.arange(n_classes), args.n_per_class)
    anchor_seeds = [i for i in range(len(labels))]
    sample = get_sampler("boundary_crossing").sample(assets.fit, args.n_outliers_per_class, seed=0, bank=assets.bank)
    outlier_seeds = [100_000 + i for i in range(len(sample.vectors))]

    rows, preds, correct, pct = {}, {}, {}, {}
    runs = [(name, preset, 0) for name, preset in VARIANTS.items()]
    runs.append((OTHER_SEEDS, PRESETS["exact"], 50_000))  # the noise floor: exact itself, other seeds
    for name, preset, seed_offset in runs:
        t1 = time.perf_counter()
        images = decoder.decode(
            assets.anchors[labels], [s + seed_offset for s in anchor_seeds], preset=preset, **settings
        )
        seconds = time.perf_counter() - t1
        preds[name] = predict(judge, pil_to_tensor(images, size)).argmax(1)
        correct[name] = preds[name] == labels
        outliers = decoder.decode(sample.vectors, [s + seed_offset for s in outlier_seeds], preset=preset, **settings)
        pct[name] = verify_images(assets.encoder, assets.fit, outliers).id_percentile
        rows[name] = {
            "plan": decoder.plan(preset, settings["steps"], settings["scheduler"]),
            "anchor_accuracy": 100 * float(correct[name].mean()),
            "anchor_decode_s": round(seconds, 2),
            "id_percentile_median": float(np.median(pct[name])),
            "id_percentile_q25_q75": [float(q) for q in np.percentile(pct[name], [25, 75])],
            "verified_share_le_10": 100 * float((pct[name] <= 10).mean()),
        }
    for name in rows:
        diff, half = paired_difference(correct[name], correct["exact"])
        rows[name]["accuracy_diff_to_exact"] = [diff, half]
        rows[name]["label_agreement_with_exact"] = 100 * float((preds[name] == preds["exact"]).mean())
        rows[name]["median_abs_pct_diff_to_exact"] = float(np.median(np.abs(pct[name] - pct["exact"])))
    return {
        "decoder": str(assets.decoder_dir),
        "settings": {k: v for k, v in settings.items() if k != "output_size"},
        "n_anchor_images": len(labels),
        "n_outliers": len(sample.vectors),
        "judge_train_s": round(judge_s, 1),
        "variants": rows,
    }


def tiny_latents(args) -> dict:
    from oodsynth.offline_decoder.tiny_model import make_tiny_pipeline

    model = make_tiny_pipeline(Path(tempfile.mkdtemp(prefix="oodsynth-fidelity-")) / "tiny")
    decoder = OutlierDecoder(model, device="cpu", n_slots=args.n_tiny)
    v = np.random.default_rng(0).normal(size=(args.n_tiny, decoder.hidden_size)).astype(np.float32)
    v *= 0.38 / np.linalg.norm(v, axis=1, keepdims=True)
    seeds = list(range(args.n_tiny))
    settings = dict(steps=50, guidance_scale=7.5, height=64, width=64, scheduler="pndm")

    def latents(preset, **change):
        out = decoder.decode(
            v, change.pop("seeds", seeds), preset=preset, output_type="latent", **{**settings, **change}
        )
        return torch.stack(out).double()

    def distance(z, ref):
        d = ((z - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).numpy()
        return [float(d.mean()), float(d.std(ddof=1))]

    exact = latents("exact")
    rows = {
        name: {
            "plan": decoder.plan(p, settings["steps"], settings["scheduler"]),
            "relative_l2_to_exact": distance(latents(p), exact),
        }
        for name, p in VARIANTS.items()
    }
    rows["yardstick: exact, 25 PNDM steps"] = {"relative_l2_to_exact": distance(latents("exact", steps=25), exact)}
    rows[OTHER_SEEDS] = {"relative_l2_to_exact": distance(latents("exact", seeds=[s + 1000 for s in seeds]), exact)}
    return {
        "model": "make_tiny_pipeline (random weights, SD v1.x layout)",
        "settings": settings,
        "n_images": args.n_tiny,
        "variants": rows,
    }


def markdown(record: dict, command: str) -> str:
    a, t = record["animals"], record["tiny"]
    lines = [
        "# Decode presets: fidelity of `fast` against `exact` (CPU)",
        "",
        f"Command: `{command}` ({record['elapsed_s']:.0f} s, torch threads {record['threads']}, "
        f"{record['date']}). Same vectors and seeds for every variant.",
        "",
        f"## Trained animals decoder ({a['settings']['scheduler']}, {a['settings']['steps']} steps, guidance "
        f"{a['settings']['guidance_scale']}, {a['settings']['height']}²)",
        "",
        f"Anchor accuracy: an independent CNN (trained on real images only, {a['judge_train_s']} s) labels "
        f"{a['n_anchor_images']} decoded class anchors. Outliers: {a['n_outliers']} `boundary_crossing` vectors "
        "(gaussian_full fit), decoded and re-encoded; ID percentile = max over classes (lower = more OOD). "
        "Δ: paired per image, ± the 95 % half-width. The last row is the noise floor: exact itself with other "
        "seeds (how often two draws of one anchor get the same label).",
        "",
        "| variant | solver, steps, reuse | anchor acc. % | Δ to exact (points, 95 %) | same label as exact % "
        "| outlier ID pct. median [q25, q75] | ≤ 10 % | median abs. Δ pct. |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in a["variants"].items():
        p = r["plan"]
        d, h = r["accuracy_diff_to_exact"]
        q = r["id_percentile_q25_q75"]
        lines.append(
            f"| {name} | {p['scheduler']}, {p['steps']}, every {p['cache_interval']} | {r['anchor_accuracy']:.1f} "
            f"| {d:+.1f} ± {h:.1f} | {r['label_agreement_with_exact']:.1f} | {r['id_percentile_median']:.2f} "
            f"[{q[0]:.2f}, {q[1]:.2f}] | {r['verified_share_le_10']:.1f} | {r['median_abs_pct_diff_to_exact']:.2f} |"
        )
    s = t["settings"]
    lines += [
        "",
        f"## Tiny random-weight SD v1.x pipeline ({s['scheduler']}, {s['steps']} steps, CFG {s['guidance_scale']}, "
        f"{s['height']}², {t['n_images']} images)",
        "",
        "Relative L2 distance of the final latents to exact's (mean ± sd over images).",
        "",
        "| variant | solver, steps, reuse | ‖z − z_exact‖ / ‖z_exact‖ |",
        "| --- | --- | --- |",
    ]
    for name, r in t["variants"].items():
        p = r.get("plan")
        plan = f"{p['scheduler']}, {p['steps']}, every {p['cache_interval']}" if p else "–"
        m, sd = r["relative_l2_to_exact"]
        lines.append(f"| {name} | {plan} | {m:.4f} ± {sd:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-per-class", type=int, default=64, help="decoded anchors per class (seeds)")
    p.add_argument("--n-outliers-per-class", type=int, default=32)
    p.add_argument("--n-tiny", type=int, default=16, help="images on the tiny pipeline")
    p.add_argument("--classifier-epochs", type=int, default=15)
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "oodsynth-decode-fidelity",
        help="where the fit of the encoder's features is cached",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="markdown report (a .json beside it)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    record = {"animals": animals(args), "tiny": tiny_latents(args)}
    record.update(elapsed_s=time.perf_counter() - t0, threads=torch.get_num_threads(), date=time.strftime("%Y-%m-%d"))
    command = "nice -n 10 .venv/bin/python bench/decode_fidelity.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = markdown(record, command.strip())
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
