"""CLI commands ``train-encoder``, ``features``, ``train-ood``, ``evaluate``.

Bad input prints one line ``error: <option>: <message>`` and exits with code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import typer

from ..errors import InputError
from .app import app
from .training_options import ARCH, DATA_ROOT, DATASET, DEVICE, OOD_OPTIONS, SEED, choice


def _fail(option: str, message: str) -> NoReturn:
    """Bad input: ``cli.app`` prints it as one line and exits 2, like every library error."""
    raise InputError(option, message)


def _load_data(dataset: str, split: str, data_root: Path | None, image_size: int | None = None, augment: bool = False):
    from ..service.evaluation import load_data

    return load_data(dataset, split, data_root, image_size, augment)


def _anchors_for(
    class_names: list[str],
    anchors: Path | None,
    anchors_model: Path | None,
    random_anchors: int | None,
    words: list[str] | None,
    seed: int,
) -> np.ndarray:
    given = [
        o
        for o, v in (("anchors", anchors), ("anchors_model", anchors_model), ("random_anchors", random_anchors))
        if v is not None
    ]
    if len(given) != 1:
        _fail("anchors", "give exactly one of --anchors FILE, --anchors-model DIR or --random-anchors DIM")
    if random_anchors is not None:
        from ..encoding.anchors import random_anchors as make_random

        if random_anchors < 1:
            _fail("random_anchors", f"dimension must be positive, got {random_anchors}")
        return make_random(len(class_names), random_anchors, seed=seed)
    if anchors is not None:
        from ..encoding.anchors import load_anchors

        if not anchors.is_file():
            _fail("anchors", f"{anchors} does not exist")
        try:
            a = load_anchors(anchors)
        except (ValueError, OSError) as exc:
            _fail("anchors", str(exc))
        if a.shape[0] != len(class_names):
            _fail("anchors", f"{anchors} has {a.shape[0]} rows, the dataset has {len(class_names)} classes")
        return a
    from ..encoding.anchors import extract_anchors

    assert anchors_model is not None  # exactly one of the three was given, and it was neither of the others
    words = words or class_names
    if len(words) != len(class_names):
        _fail("words", f"{len(words)} words for {len(class_names)} classes")
    try:
        return extract_anchors(anchors_model, words)
    except (ValueError, OSError) as exc:
        _fail("anchors_model", str(exc))


@app.command("train-encoder")
def train_encoder_cmd(
    out: Path = typer.Option(..., "--out", help="Run folder; the checkpoint is OUT/encoder.pt."),
    dataset: str = DATASET,
    data_root: Path | None = DATA_ROOT,
    anchors: Path | None = typer.Option(None, help="Anchors T(y): a (C, D) .npy or a bank .npz, in class order."),
    anchors_model: Path | None = typer.Option(None, help="SD model folder: anchors are its token rows for --words."),
    words: list[str] | None = typer.Option(None, "--words", help="Prompt word per class (default: class names)."),
    random_anchors: int | None = typer.Option(None, help="Random unit anchors of this dimension (a stand-in)."),
    arch: str = ARCH,
    width: int = typer.Option(64, help="CIFAR ResNet base width (64 = standard)."),
    epochs: int = typer.Option(200, help="Passes over the training set."),
    batch_size: int = typer.Option(256, help="Images per step."),
    lr: float = typer.Option(0.1, help="Initial learning rate (SGD with Nesterov momentum, cosine to 0)."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(5e-4, help="SGD weight decay."),
    temperature: float = typer.Option(0.1, help="t in cos(T(y_j), z)/t."),
    kernel: str = choice("cosine", ("cosine", "euclidean"), "Similarity of a feature to the class anchors."),
    image_size: int | None = typer.Option(None, help="Input size (digits: default 16)."),
    augment: bool = typer.Option(True, help="Random crop/flip for CIFAR and folders."),
    seed: int = SEED,
    resume: bool = typer.Option(False, help="Continue from OUT/encoder.pt."),
    device: str | None = DEVICE,
) -> None:
    """Train the text-aligned encoder (CE over cos(T(y_j), z)/t) with a checkpoint per epoch."""
    import pydantic

    from ..encoding.training import EncoderTrainConfig, train_encoder

    train = _load_data(dataset, "train", data_root, image_size, augment)
    test = _load_data(dataset, "test", data_root, image_size)
    a = _anchors_for(train.class_names, anchors, anchors_model, random_anchors, words, seed)
    try:
        config = EncoderTrainConfig(
            arch=arch,
            width=width,
            kernel=kernel,
            temperature=temperature,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            seed=seed,
            dataset=dataset,
            image_size=train.image_size,
            mean=train.mean,
            std=train.std,
        )
    except pydantic.ValidationError as exc:
        raise InputError.from_pydantic(exc) from None
    try:
        ckpt = train_encoder(config, train, a, out, eval_data=test, resume=resume, device=device)
    except ValueError as exc:
        _fail("anchors" if "anchors" in str(exc) else "resume", str(exc))
    last = ckpt.history[-1] if ckpt.history else {}
    typer.echo(
        f"encoder: {out / 'encoder.pt'} after {ckpt.epoch} epochs; loss {last.get('loss', float('nan')):.4f}, "
        f"nearest-anchor accuracy on {test.name}: {100 * last.get('eval_accuracy', float('nan')):.2f}%"
    )


@app.command("features")
def features_cmd(
    checkpoint: Path = typer.Option(..., help="Encoder checkpoint (file or run folder)."),
    out: Path = typer.Option(..., "--out", help="Bank file to write (.npz)."),
    dataset: str = DATASET,
    split: str = choice("train", ("train", "test"), "The split to encode."),
    data_root: Path | None = DATA_ROOT,
    batch_size: int = typer.Option(256, min=1, help="Images per forward pass."),
) -> None:
    """Encode a dataset into a feature bank (.npz): unit features, labels, anchors, class names."""
    from ..encoding.features import build_bank, nearest_anchor
    from ..encoding.training import load_encoder

    try:
        ckpt = load_encoder(checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        _fail("checkpoint", str(exc))
    data = _load_data(dataset, split, data_root, ckpt.config.image_size)
    try:
        bank = build_bank(ckpt, data, batch_size=batch_size)
    except ValueError as exc:
        _fail("dataset", str(exc))
    if not out.parent.is_dir():
        _fail("out", f"folder {out.parent} does not exist")
    bank.save(out)
    acc = float(np.mean(nearest_anchor(bank.features, bank.anchors)[0] == bank.labels))
    typer.echo(
        f"bank: {out} with {len(bank.features)} features of dim {bank.dim}, {bank.n_classes} classes; "
        f"nearest-anchor accuracy {100 * acc:.2f}%"
    )


@app.command("train-ood")
def train_ood_cmd(
    out: Path = OOD_OPTIONS["out"],
    dataset: str = DATASET,
    data_root: Path | None = DATA_ROOT,
    store: str | None = OOD_OPTIONS["store"],
    outliers: list[str] | None = OOD_OPTIONS["outliers"],
    max_id_percentile: float | None = OOD_OPTIONS["max_id_percentile"],
    min_id_percentile: float = OOD_OPTIONS["min_id_percentile"],
    max_margin: float | None = OOD_OPTIONS["max_margin"],
    all_outliers: bool = OOD_OPTIONS["all_outliers"],
    stream: bool = OOD_OPTIONS["stream"],
    shuffle_buffer: int = OOD_OPTIONS["shuffle_buffer"],
    noise_share: float = OOD_OPTIONS["noise_share"],
    mixing_share: float = OOD_OPTIONS["mixing_share"],
    mixing_kind: str = OOD_OPTIONS["mixing_kind"],
    recipe: str = OOD_OPTIONS["recipe"],
    outlier_ratio: float = OOD_OPTIONS["outlier_ratio"],
    feature_outliers: str | None = OOD_OPTIONS["feature_outliers"],
    init_encoder: Path | None = OOD_OPTIONS["init_encoder"],
    init_classifier: Path | None = OOD_OPTIONS["init_classifier"],
    redraw_every: int = OOD_OPTIONS["redraw_every"],
    redraw_density: str = OOD_OPTIONS["redraw_density"],
    virtual_outliers: str | None = OOD_OPTIONS["virtual_outliers"],
    virtual_param: list[str] | None = OOD_OPTIONS["virtual_param"],
    beta: float = OOD_OPTIONS["beta"],
    ood_loss: str = OOD_OPTIONS["ood_loss"],
    arch: str = ARCH,
    width: int = OOD_OPTIONS["width"],
    epochs: int = OOD_OPTIONS["epochs"],
    batch_size: int = OOD_OPTIONS["batch_size"],
    ood_batch_size: int = OOD_OPTIONS["ood_batch_size"],
    lr: float = OOD_OPTIONS["lr"],
    weight_decay: float = OOD_OPTIONS["weight_decay"],
    image_size: int | None = OOD_OPTIONS["image_size"],
    augment: bool = OOD_OPTIONS["augment"],
    seed: int = SEED,
    resume: bool = OOD_OPTIONS["resume"],
    device: str | None = DEVICE,
) -> None:
    """Train a classifier with L = CE + beta * L_ood on generated outliers from the store, or (given none) on the
    OOD lab's recommended generator-free recipe (--recipe)."""
    options = dict(locals())  # first: every option by name, before any other local
    from ..service.training import train_ood_run

    result = train_ood_run(**_train_ood_arguments(options))
    clf, last = result.classifier, result.classifier.history[-1]
    if clf.outlier_note:
        typer.echo(f"outliers: {clf.outlier_note}")
    typer.echo(
        f"ood model: {result.checkpoint} ({result.kind}) after {clf.epoch} epochs; "
        f"ce {last['ce']:.4f}, L_ood {last['ood']:.4f}"
    )


def _train_ood_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """train-ood's options as ``train_ood_run`` takes them: the verification filter resolved, two names mapped."""
    o = dict(options)
    all_outliers, max_id = o.pop("all_outliers"), o.pop("max_id_percentile")
    if all_outliers and (o["min_id_percentile"] or o["max_margin"] is not None):
        _fail("all_outliers", "keeps every image: give no --min-id-percentile or --max-margin with it")
    o["max_id_percentile"] = max_id if max_id is not None else None if all_outliers else "auto"
    o["stream_outliers"], o["virtual_params"] = o.pop("stream"), o.pop("virtual_param")
    o["outlier_recipe"] = o.pop("recipe")
    return o


def _load_fit(fit: str):
    """A fit by name from the registry (Redis), or a file of ``ClassDensities.to_bytes``."""
    from ..densities import ClassDensities

    if Path(fit).is_file():
        try:
            return ClassDensities.from_bytes(Path(fit).read_bytes())
        except (ValueError, KeyError, OSError) as exc:
            _fail("fit", f"{fit} is not a saved fit ({exc})")
    from ..state.fits import FitRegistry
    from .core import _registry_client

    return FitRegistry(_registry_client()).get(fit)[0]  # NotFound names "fit"


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Path | None = typer.Option(
        None,
        help="OOD classifier checkpoint from train-ood (file or run folder); needed for every score but density.",
    ),
    dataset: str = typer.Option("digits", help="ID dataset (its test split is scored)."),
    ood: list[str] | None = typer.Option(
        None,
        "--ood",
        help="OOD set: digits:ood, animals:far-noise, cifar10:test, "
        "imagefolder:<path> (repeatable; offline profiles default to their "
        "near- and far-OOD sets).",
    ),
    score: list[str] | None = typer.Option(
        None,
        "--score",
        help="all, a pytorch-ood detector (msp, maxlogit, energy, mahalanobis, knn, vim, react, ...: a wrong "
        "name lists them all), a fused one (energy+mahalanobis: each part standardised on ID train, summed), "
        "phi or density (repeatable; default knn (k 1: the OOD lab's test score), energy, and phi where it was "
        "trained). "
        "density = max class log-density of the encoder feature; all = every score the inputs allow, one table.",
    ),
    param: list[str] | None = typer.Option(
        None,
        "--param",
        help="Detector setting DETECTOR.NAME=VALUE, e.g. knn.k=100 or vim.d=64 (repeatable); knn's k is 1 unless given.",
    ),
    encoder: Path | None = typer.Option(None, help="Text-aligned encoder checkpoint (for --score density)."),
    fit: str | None = typer.Option(None, help="Stored fit name or fit file (for --score density)."),
    data_root: Path | None = DATA_ROOT,
    json_out: Path | None = typer.Option(
        None,
        "--json",
        help="Write the results as JSON here, and beside it per OOD set the ROC curves (JSON.roc.SET.png) and the "
        "score histograms (JSON.hist.SET.png).",
    ),
    all_sets: bool = typer.Option(
        False, "--all", help="After the summary (averages over the OOD sets), a row per score and OOD set."
    ),
    batch_size: int = typer.Option(256, min=1, help="Images per forward pass."),
) -> None:
    """ID accuracy and FPR95 / AUROC / AUPR-in / AUPR-out per OOD set, for pytorch-ood's detectors, phi and density.

    Detectors that fit (Mahalanobis, KNN, ViM, ReAct, ...) are fitted on the ID dataset's train split.
    """
    from rich.console import Console

    from ..service.evaluation import evaluate_scores, parse_detector_params

    if json_out is not None and not json_out.parent.is_dir():
        _fail("json", f"folder {json_out.parent} does not exist")
    params = parse_detector_params(param)
    wants_density = any(s in ("density", "all") for s in score or [])
    densities = _load_fit(fit) if fit is not None and wants_density else None
    report = evaluate_scores(
        dataset=dataset,
        scores=score,
        ood=ood,
        checkpoint=checkpoint,
        encoder=encoder,
        densities=densities,
        data_root=data_root,
        batch_size=batch_size,
        params=params,
    )
    Console().print(report.table(f"evaluate {checkpoint or encoder}", full=all_sets))
    for note in report.notes():
        typer.echo(f"note: {note}")
    if json_out is not None:
        plots = report.write_plots(json_out.with_suffix(""))
        json_out.write_text(
            json.dumps({**report.to_dict(), "notes": report.notes(), "plots": [p.name for p in plots]}, indent=2)
        )
        typer.echo(f"results: {json_out}; {len(plots)} plots beside it ({', '.join(p.name for p in plots[:2])}, ...)")
