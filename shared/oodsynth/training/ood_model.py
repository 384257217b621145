"""The model ``train_ood`` starts from: fresh, the text-aligned encoder with an anchor-initialised head
(``init_encoder``), or a train-ood checkpoint to fine-tune (``init_classifier``), each checked against the data."""

from __future__ import annotations

import torch

from ..data import ImageData
from ..encoding.encoder import TextAlignedEncoder
from ..errors import InputError
from .classifier import EnergyHead, FeatureClassifier, build_classifier, read_ood_checkpoint
from .feature_outliers import FeatureOutliers
from .ood_config import OODTrainConfig


def from_encoder(config: OODTrainConfig, train: ImageData) -> tuple[OODTrainConfig, FeatureClassifier, EnergyHead]:
    """Encoder + anchor-initialised head from ``config.init_encoder``; the architecture fields come from it."""
    from ..encoding.training import load_encoder

    assert config.init_encoder is not None  # build_model calls this only when it is set
    try:
        ckpt = load_encoder(config.init_encoder, device="cpu")
    except (FileNotFoundError, ValueError) as exc:
        raise InputError("init_encoder", f"{exc}") from exc
    if list(ckpt.class_names) != list(train.class_names):
        raise InputError(
            "init_encoder",
            f"its classes {ckpt.class_names[:5]}... differ from the dataset's {list(train.class_names)[:5]}...",
        )
    if ckpt.config.image_size != config.image_size:
        raise InputError(
            "init_encoder", f"trained at image size {ckpt.config.image_size}, the data is {config.image_size}"
        )
    if ckpt.config.kernel != "cosine":
        raise InputError("init_encoder", "feature outliers need a cosine-kernel encoder (features on the unit sphere)")
    enc = ckpt.config
    config = config.model_copy(update={"arch": enc.arch, "width": enc.width, "mean": enc.mean, "std": enc.std})
    model, phi = build_classifier(config, len(train.class_names), feature_dim=ckpt.anchors.shape[1])
    model.encoder.load_state_dict(ckpt.model.state_dict())
    model.init_head_from_anchors(torch.from_numpy(ckpt.anchors), enc.temperature)
    return config, model, phi


def from_classifier(
    config: OODTrainConfig, train: ImageData
) -> tuple[OODTrainConfig, TextAlignedEncoder | FeatureClassifier, EnergyHead]:
    """The model of ``config.init_classifier`` (weights only: a fresh optimiser, schedule and phi)."""
    assert config.init_classifier is not None  # build_model calls this only when it is set
    try:
        state = read_ood_checkpoint(config.init_classifier)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError("init_classifier", f"{exc}") from exc
    if list(state["class_names"]) != list(train.class_names):
        raise InputError(
            "init_classifier",
            f"its classes {state['class_names'][:5]}... differ from the dataset's {list(train.class_names)[:5]}...",
        )
    base = OODTrainConfig.model_validate(state["config"])
    if base.image_size != config.image_size:
        raise InputError("init_classifier", f"trained at image size {base.image_size}, the data is {config.image_size}")
    config = config.model_copy(update={k: getattr(base, k) for k in ("arch", "width", "mean", "std")})
    model, phi = build_classifier(config, len(train.class_names), state.get("feature_dim"))
    model.load_state_dict(state["model"])
    return config, model, phi


def build_model(
    config: OODTrainConfig, train: ImageData, features: FeatureOutliers | None, device: torch.device
) -> tuple[OODTrainConfig, TextAlignedEncoder | FeatureClassifier, EnergyHead]:
    """The model and phi on ``device``: fresh, or from the checkpoint the config names (which then sets the
    architecture fields of the returned config)."""
    if config.init_encoder and config.init_classifier:
        raise InputError("init_classifier", "give init_encoder or init_classifier, not both")
    if config.init_classifier:
        config, model, phi = from_classifier(config, train)
    elif config.init_encoder:
        config, model, phi = from_encoder(config, train)
        if features is not None and features.vectors.shape[1] != model.encoder.dim:
            raise InputError(
                "feature_outliers",
                f"vectors have dim {features.vectors.shape[1]}, the encoder's features {model.encoder.dim}",
            )
    else:
        model, phi = build_classifier(config, len(train.class_names))
    return config, model.to(device), phi.to(device)
