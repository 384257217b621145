"""The ``train-ood`` use case: check the inputs, assemble the config, train, and say what was trained.

Every adapter (the CLI today, the lab later) calls ``train_ood_run``; its errors name the user-facing
inputs (``outliers``, not the dataset layer's ``datasets``). Heavy imports happen inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError
from .assignments import split_assignment

# the training layer's field names -> the names a user of train-ood gives them
_FIELD_NAMES = {
    "datasets": "outliers",
    "outlier_datasets": "outliers",
    "virtual_params": "virtual_param",
    "stream_outliers": "stream",
    "outlier_recipe": "recipe",
}


def _user_field(field: str | None) -> str | None:
    """The name a user of train-ood gives a training-layer field (other names, and None, as they are)."""
    return None if field is None else _FIELD_NAMES.get(field, field)


@dataclass
class TrainOODResult:
    classifier: Any  # training.classifier.OODClassifier
    checkpoint: Path
    kind: str  # "CE only" or "CE + 0.5 * L_ood on 2 outlier set(s)"


def parse_virtual_params(specs: Sequence[str] | None) -> dict[str, Any]:
    """``["queue_size=64", "warmup=0"]`` -> ``{"queue_size": 64, "warmup": 0}`` (values read as JSON, else text).

    Names and values are checked against the sampler's own parameters when the config is made.
    """
    return dict(
        split_assignment(spec, f"virtual_param[{i}]", "NAME=VALUE (e.g. queue_size=64)")
        for i, spec in enumerate(specs or [])
    )


def resolve_recipe(recipe: str | None, *, other_sources: bool, beta: float) -> str | None:
    """``"auto"``: the recipe the OOD lab recommends (``RECOMMENDED_RECIPE``) when nothing else gives the run
    outliers and L_ood is on, else none (a run on stored, feature or virtual outliers, a fine-tune, or beta 0 is
    what it was); ``"none"``: the bare CE run; a recipe name: that recipe."""
    from ..training.outlier_mix import RECOMMENDED_RECIPE

    if recipe == "auto":
        return RECOMMENDED_RECIPE if not other_sources and beta > 0 else None
    return None if recipe in (None, "none") else recipe


def train_ood_run(
    out: Path,
    *,
    dataset: str = "digits",
    data_root: Path | None = None,
    store: str | Path | None = None,
    outliers: list[str] | None = None,
    max_id_percentile: float | Literal["auto"] | None = "auto",
    feature_outliers: str | None = None,
    virtual_outliers: str | None = None,
    virtual_params: Sequence[str] | dict[str, Any] | None = None,
    image_size: int | None = None,
    augment: bool = True,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    **config: Any,
) -> TrainOODResult:
    """Train a classifier with CE + beta * L_ood; ``config`` holds the other ``OODTrainConfig`` fields.

    ``store`` defaults to the settings' ``OODSYNTH_STORE``; ``max_id_percentile`` None keeps every image.
    ``virtual_outliers`` (``vos`` or ``npos``) draws outliers from the penultimate features in training;
    ``virtual_params`` are its sampler's parameters, a dict or ``NAME=VALUE`` strings as the CLI takes them.
    """
    import pydantic

    from ..config import get_settings, parse_store_setting
    from ..training.ood import train_ood
    from ..training.ood_config import OODTrainConfig
    from ..training.outlier_dataset import is_export
    from .evaluation import load_data

    outliers = list(outliers or [])
    config["outlier_recipe"] = resolve_recipe(
        config.get("outlier_recipe", "auto"),
        other_sources=bool(outliers or feature_outliers or virtual_outliers or config.get("init_classifier")),
        beta=config.get("beta", 0.5),
    )
    if not isinstance(virtual_params, dict):
        virtual_params = parse_virtual_params(virtual_params)
    train = load_data(dataset, "train", data_root, image_size, augment)
    store_root = parse_store_setting(str(store)) if store else get_settings().store
    if any(not is_export(o) for o in outliers) and isinstance(store_root, Path) and not store_root.is_dir():
        raise InputError("store", f"result store {store_root} does not exist")
    for path_field in ("init_encoder", "init_classifier"):
        if config.get(path_field) is not None:
            config[path_field] = str(config[path_field])
    try:
        cfg = OODTrainConfig(
            **config,
            dataset=dataset,
            image_size=train.image_size,
            mean=train.mean,
            std=train.std,
            store=str(store_root),
            outlier_datasets=outliers,
            max_id_percentile=max_id_percentile,
            virtual_outliers=virtual_outliers,
            virtual_params=virtual_params,
        )
    except pydantic.ValidationError as exc:
        error = InputError.from_pydantic(exc)
        raise InputError(_user_field(error.field), error.message) from None
    try:
        clf = train_ood(
            cfg, train, out, feature_outliers=feature_outliers, resume=resume, device=device, progress=progress
        )
    except InputError as exc:
        raise InputError(_user_field(exc.field), exc.message) from exc
    except ValueError as exc:  # an unreadable image or manifest in the store
        raise InputError("outliers", str(exc)) from exc
    sets = [f"{len(outliers)} outlier set(s)"] if outliers else []
    sets += [f"smooth noise ({cfg.noise_share:g} of the outliers)"] if outliers and cfg.noise_share else []
    sets += [f"{cfg.mixing_kind} mixes ({cfg.mixing_share:g} of the outliers)"] if outliers and cfg.mixing_share else []
    sets += [f"{cfg.outlier_recipe} ({cfg.outlier_ratio:g} per ID image)"] if cfg.outlier_recipe else []
    sets += ["feature outliers"] if feature_outliers else []
    sets += [f"{virtual_outliers} virtual outliers"] if virtual_outliers else []
    kind = f"CE + {cfg.beta} * L_ood on {' + '.join(sets)}" if clf.uses_outliers else "CE only"
    return TrainOODResult(clf, Path(out) / "ood.pt", kind)
