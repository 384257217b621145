"""The ``evaluate`` use case: score an ID test set and OOD sets with pytorch-ood's detectors, phi and/or density.

Written once here so that every adapter (today the CLI) checks the same
inputs the same way; heavy imports (torch, the models) happen inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError, NoOODSets
from .assignments import split_assignment

# The scores evaluate gives when asked for none: the OOD lab's test-time score first (KNN on the model's own
# penultimate features, k 1: lab.settings test_score and POSTHOC_PARAMS, chosen on the dev splits), then energy and
# phi, the trainer's own. RECIPE_PARAMS are those parameters, used wherever the user sets none for that detector.
DEFAULT_SCORES = ("knn", "energy", "phi")
RECIPE_PARAMS: dict[str, dict] = {"knn": {"k": 1}}


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


def resolve_scores(scores: Sequence[str] | None, *, phi_trained: bool | None, density: bool) -> list[str]:
    """The asked scores in order, ``all`` expanded to every detector plus phi / density where they apply.

    ``phi_trained`` is None without a checkpoint; ``density`` says whether an encoder and a fit were given.
    """
    from ..training.detectors import DETECTORS, fused_parts, is_fused
    from ..training.evaluation import SCORE_KINDS

    asked = list(scores or DEFAULT_SCORES)
    out: list[str] = []
    for s in asked:
        if s == "all":
            names = [*(DETECTORS if phi_trained is not None else []), *(["phi"] if phi_trained else [])]
            names += ["density"] if density else []
        elif is_fused(s):  # energy+mahalanobis: one detector, each part checked
            fused_parts(s)
            names = [s]
        elif s not in SCORE_KINDS:
            raise InputError("score", f"unknown score {s!r}; choose from all, {', '.join(SCORE_KINDS)}")
        elif s == "phi" and phi_trained is False:
            if not scores:  # the default asks for phi only where it was trained
                continue
            raise InputError("score", "phi: this checkpoint's phi was never trained (CE only or outlier_exposure)")
        else:
            names = [s]
        out += [n for n in names if n not in out]
    if not out:
        raise InputError("score", "--score all needs --checkpoint, or --encoder with --fit")
    return out


def parse_detector_params(specs: Sequence[str] | None) -> dict[str, dict]:
    """``["knn.k=100", "vim.d=64"]`` -> ``{"knn": {"k": 100}, "vim": {"d": 64}}`` (values read as JSON)."""
    from ..training.detectors import DETECTORS

    params: dict[str, dict] = {}
    for i, spec in enumerate(specs or []):
        form = "DETECTOR.NAME=VALUE (e.g. knn.k=100)"
        key, value = split_assignment(spec, f"param[{i}]", form)
        name, dot, param = key.partition(".")
        if not (dot and param):
            raise InputError(f"param[{i}]", f"{spec!r} is not {form}")
        if name not in DETECTORS:
            raise InputError(f"param[{i}]", f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
        params.setdefault(name, {})[param] = value
    return params


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
    params: dict[str, dict] | None = None,
):
    """One ``EvaluationReport`` with every asked score.

    The pytorch-ood detectors and phi need ``checkpoint`` (detectors that fit read the ID train split, without
    augmentation); density needs ``encoder`` + ``densities``. ``all`` is every score the inputs allow.
    """
    from ..training.detectors import DETECTORS, evaluate_detectors, is_fused
    from ..training.evaluation import evaluate, evaluate_density
    from ..training.report import merge_reports

    clf = enc = None
    image_size = class_names = None
    if checkpoint is not None:
        from ..training.classifier import load_ood_classifier

        clf = _load(load_ood_classifier, checkpoint, "checkpoint")
        image_size, class_names = clf.config.image_size, clf.class_names
    phi_trained = None if clf is None else clf.uses_outliers and clf.config.ood_loss == "energy_logistic"
    names = resolve_scores(scores, phi_trained=phi_trained, density=encoder is not None and densities is not None)
    detectors = [n for n in names if n in DETECTORS or is_fused(n)]
    if (detectors or "phi" in names) and clf is None:
        raise InputError("checkpoint", f"the {(detectors or ['phi'])[0]} score needs --checkpoint (a train-ood model)")
    if "density" in names:
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
        raise NoOODSets("give at least one OOD set with --ood")
    assert class_names is not None  # every score needs a checkpoint or an encoder, and both name the classes
    id_data = load_data(dataset, "test", data_root, image_size)
    if list(id_data.class_names) != class_names:
        raise InputError("dataset", f"{dataset} classes differ from the model's {class_names[:5]}...")
    ood_sets = load_ood_sets(ood, data_root, image_size)
    reports = []
    if detectors:
        train = load_data(dataset, "train", data_root, image_size)
        params = {**RECIPE_PARAMS, **(params or {})}
        reports.append(
            evaluate_detectors(
                clf, train, id_data, ood_sets, names=detectors, params=params, batch_size=batch_size, progress=True
            )
        )
    if "phi" in names:
        assert clf is not None  # checked above: phi needs --checkpoint
        report = evaluate(clf, id_data, ood_sets, batch_size=batch_size)
        report.results = {"phi": report.results["phi"]}
        reports.append(report)
    if enc is not None:
        reports.append(evaluate_density(enc.model, densities, id_data, ood_sets, batch_size=batch_size))
    merged = merge_reports(*reports)
    merged.results = {n: merged.results[n] for n in names}
    return merged
