"""One full offline run of the method on the digits profile, CPU-sized (a few minutes).

    .venv/bin/python bench/ood_offline.py [--work DIR] [--json results.json]

1. anchors: the token rows of the ten digit words in a tiny random-weight SD
   pipeline (``make_tiny_pipeline``; the hub is unreachable), 768-d;
2. train the text-aligned encoder on digits 0-7 (8 and 9 are held out);
3. feature bank of the training images; fit class densities (vMF);
4. sample low-density outlier vectors per class (``knn_boundary`` by default);
5. decode them into images with ``OutlierDecoder`` on the tiny pipeline and
   write them into a result store;
6. train a CE-only baseline and a CE + beta * L_ood model with the same
   seed, epochs and architecture;
7. evaluate both on the held-out digits 8 and 9 (near-OOD) and print the
   comparison table (FPR95, AUROC, AUPR-in/out, ID accuracy).

The tiny pipeline's weights are random, so its "images" are structured noise
conditioned on the outlier vectors, not pictures of digits: this run checks
that the whole chain works and measures what such outliers are worth; it is
not the paper's setting.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--encoder-epochs", type=int, default=6)
    p.add_argument("--ood-epochs", type=int, default=8)
    p.add_argument("--width", type=int, default=16, help="CIFAR ResNet-18 base width")
    p.add_argument("--method", default="knn_boundary")
    p.add_argument("--density", default="vmf")
    p.add_argument("--n-per-class", type=int, default=40, help="outlier images per ID class")
    p.add_argument("--steps", type=int, default=10, help="diffusion steps per image")
    p.add_argument("--beta", type=float, default=2.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="oodsynth-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    console = Console()
    timings: dict[str, float] = {}

    def step(name: str):
        console.rule(name)
        timings[name] = time.perf_counter()

    def done(name: str):
        timings[name] = time.perf_counter() - timings[name]

    from oodsynth.anchors import extract_anchors
    from oodsynth.data import DIGIT_WORDS, load_dataset
    from oodsynth.tiny_model import make_tiny_pipeline

    step("anchors")
    model_dir = work / "tiny-sd"
    if not (model_dir / "model_index.json").exists():
        make_tiny_pipeline(model_dir, words=list(DIGIT_WORDS), seed=args.seed)
    train, test, ood = (load_dataset("digits", s) for s in ("train", "test", "ood"))
    anchors = extract_anchors(model_dir, train.class_names)
    console.print(f"anchors {anchors.shape}, norms {np.linalg.norm(anchors, axis=1).round(3).tolist()}")
    done("anchors")

    from oodsynth.encoder_training import EncoderTrainConfig, train_encoder
    from oodsynth.features import build_bank

    step("encoder")
    enc_cfg = EncoderTrainConfig(width=args.width, epochs=args.encoder_epochs, batch_size=64, lr=0.05,
                                 image_size=train.image_size, mean=train.mean, std=train.std, dataset="digits",
                                 seed=args.seed)
    encoder = train_encoder(enc_cfg, train, anchors, work / "encoder", eval_data=test, device=args.device)
    enc_acc = encoder.history[-1]["eval_accuracy"]
    console.print(f"encoder nearest-anchor accuracy on held-out ID images: {100 * enc_acc:.2f}%")
    bank = build_bank(encoder, train)
    bank.save(work / "bank.npz")
    done("encoder")

    from oodsynth.densities import ClassDensities
    from oodsynth.samplers import get_sampler

    step("fit + sample")
    fit = ClassDensities(kind=args.density).fit(bank)
    params = {"k": 20, "select": 10, "n_draws": 200} if args.method == "knn_boundary" else {}
    sampler = get_sampler(args.method, params)
    result = sampler.sample(fit, args.n_per_class, seed=args.seed, bank=bank)
    pct = result.diagnostics["id_percentile"]
    console.print(f"{len(result.vectors)} outlier vectors by {args.method}; ID percentile median "
                  f"{np.nanmedian(pct):.2f}, cos to class mean median {np.nanmedian(result.diagnostics['cos_to_mean']):.3f}")
    np.savez(work / "sample.npz", vectors=result.vectors, class_index=result.class_index)
    done("fit + sample")

    from oodsynth.decoding import OutlierDecoder
    from oodsynth.store import ImageRecord, ResultStore

    step("decode")
    store = ResultStore(work / "store")
    dataset = f"digits-{args.method}"
    decoder = OutlierDecoder(model_dir, device=args.device, n_slots=16)
    seeds = [args.seed * 100_000 + i for i in range(len(result.vectors))]
    images = decoder.decode(result.vectors, seeds, steps=args.steps, height=64, width=64, output_size=64)
    for i, (img, c) in enumerate(zip(images, result.class_index)):
        name = bank.class_names[c]
        store.write_image(dataset, ImageRecord(
            image_id=f"{dataset}-{i:05d}", class_index=int(c), class_name=str(name), vector_id=f"v{i:05d}",
            sampler=args.method, sampler_params=result.params, seed=seeds[i], model=str(model_dir),
            prompt=f"A high-quality image of the {name}",
            diagnostics={k: float(v[i]) for k, v in result.diagnostics.items()}), img)
    console.print(f"{len(images)} images in {store.root / dataset}")
    done("decode")

    from oodsynth.evaluation import comparison_table, evaluate
    from oodsynth.ood_training import OODTrainConfig, train_ood

    reports = {}
    for label, beta, outliers in (("CE only", 0.0, []), (f"CE + {args.beta}·L_ood", args.beta, [dataset])):
        step(f"train {label}")
        cfg = OODTrainConfig(width=args.width, epochs=args.ood_epochs, batch_size=64, ood_batch_size=64, lr=0.05,
                             beta=beta, seed=args.seed, dataset="digits", image_size=train.image_size,
                             mean=train.mean, std=train.std, store=str(store.root), outlier_datasets=outliers)
        clf = train_ood(cfg, train, work / ("baseline" if beta == 0 else "ood"), device=args.device)
        reports[label] = evaluate(clf, test, {"digits 8+9 (held out)": ood})
        done(f"train {label}")

    for label, rep in reports.items():
        console.print(rep.table(label))
    console.print(comparison_table(reports, "digits profile: ID 0-7, near-OOD 8+9 (percent)"))
    console.print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    console.print(f"work folder: {work}")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()},
            "encoder_accuracy": enc_acc,
            "reports": {k: r.to_dict() for k, r in reports.items()},
            "timings_s": timings,
        }, indent=2))


if __name__ == "__main__":
    main()
