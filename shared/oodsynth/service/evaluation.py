"""The ``evaluate`` use case: score an ID test set and OOD sets with a detector's energy/phi and/or the density score.

Written once here so that every adapter (today the CLI) checks the same
inputs the same way; heavy imports (torch, the models) happen inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError

DEFAULT_SCORES = ("energy", "phi")


def load_data(
    dataset: str,
    split: str,
    data_root: Path | None,
    image_size: int | None = None,
    augment: bool = False,
    option: str = "dataset",
):
    """``load_dataset`` whose errors name ``option`` (the input that chose the dataset) instead of ``dataset``."""
    from ..data import DataUnavailableError, load_dataset

    try:
        return load_dataset(dataset, split, root=data_root, image_size=image_size, augment=augment)
    except DataUnavailableError as exc:
        raise InputError(exc.field if exc.field != "dataset" else option, exc.message) from exc


def load_ood_sets(specs: Sequence[str], data_root: Path | None, image_size: int | None) -> dict:
    """``digits:ood``, ``animals:far-noise``, ``cifar10:test``, ``imagefolder:<path>`` or a folder -> datasets by name."""
    sets = {}
    for spec in specs:
        if spec.startswith("imagefolder:") or Path(spec).is_dir():
            sets[Path(spec.split(":", 1)[-1]).name] = load_data(spec, "test", data_root, image_size, option="ood")
        else:
            name, _, split = spec.partition(":")
            sets[spec] = load_data(name, split or "test", data_root, image_size, option="ood")
    return sets


def default_ood_specs(dataset: str) -> list[str]:
    """An offline profile's near-OOD set and its far-OOD sets; nothing for other datasets."""
    from ..data import FAR_KINDS, OFFLINE_PROFILES

    if dataset not in OFFLINE_PROFILES:
        return []
    return [f"{dataset}:ood"] + [f"{dataset}:far-{kind}" for kind in FAR_KINDS[dataset]]


def _load(loader, path: Path, field: str):
    try:
        return loader(path)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(field, str(exc)) from exc


def evaluate_scores(
    *,
    dataset: str,
    scores: Sequence[str] | None = None,
    ood: Sequence[str] | None = None,
    checkpoint: Path | None = None,
    encoder: Path | None = None,
    densities=None,
    data_root: Path | None = None,
    batch_size: int = 256,
):
    """One ``EvaluationReport`` with every asked score: energy/phi need ``checkpoint``, density ``encoder`` + ``densities``."""
    from ..training.evaluation import SCORE_KINDS, evaluate, evaluate_density, merge_reports

    scores = list(dict.fromkeys(scores or DEFAULT_SCORES))
    unknown = [s for s in scores if s not in SCORE_KINDS]
    if unknown:
        raise InputError("score", f"unknown score {unknown[0]!r}; choose from {', '.join(SCORE_KINDS)}")
    classifier_scores = [s for s in scores if s in DEFAULT_SCORES]
    clf = enc = None
    image_size = class_names = None
    if classifier_scores:
        if checkpoint is None:
            raise InputError("checkpoint", "the energy and phi scores need --checkpoint (a train-ood model)")
        from ..training.ood import load_ood_classifier

        clf = _load(load_ood_classifier, checkpoint, "checkpoint")
        image_size, class_names = clf.config.image_size, clf.class_names
    if "density" in scores:
        if encoder is None or densities is None:
            raise InputError("encoder" if encoder is None else "fit", "--score density needs --encoder and --fit")
        from ..encoding.training import load_encoder

        enc = _load(load_encoder, encoder, "encoder")
        if densities.dim != enc.model.dim:
            raise InputError("fit", f"its dimension {densities.dim} differs from the encoder's {enc.model.dim}")
        if class_names is not None and class_names != enc.class_names:
            raise InputError("encoder", "its classes differ from the checkpoint's")
        image_size, class_names = image_size or enc.config.image_size, enc.class_names
    ood = list(ood or default_ood_specs(dataset))
    if not ood:
        raise InputError("ood", "give at least one OOD set with --ood")
    id_data = load_data(dataset, "test", data_root, image_size)
    if list(id_data.class_names) != class_names:
        raise InputError("dataset", f"{dataset} classes differ from the model's {class_names[:5]}...")
    ood_sets = load_ood_sets(ood, data_root, image_size)
    reports = []
    if clf is not None:
        report = evaluate(clf, id_data, ood_sets, batch_size=batch_size)
        for kind in set(DEFAULT_SCORES) - set(classifier_scores):
            report.results.pop(kind, None)
        reports.append(report)
    if enc is not None:
        reports.append(evaluate_density(enc.model, densities, id_data, ood_sets, batch_size=batch_size))
    return merge_reports(*reports)
