"""The trained OOD classifier: f (a plain classifier, or encoder + head), phi on its energy, and its checkpoint.

``penultimate`` and ``head_of`` split either kind of f at its classification head, for the training loop's
virtual outliers and the post-hoc detectors alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoints import read_checkpoint, write_checkpoint
from ..device import default_device
from ..encoding.encoder import TextAlignedEncoder, build_encoder
from .ood_config import OODTrainConfig

CHECKPOINT_NAME = "ood.pt"


class EnergyHead(nn.Module):
    """phi: the energy (one number per image) -> logit of "in-distribution"."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, energy: torch.Tensor) -> torch.Tensor:
        return self.net(energy.unsqueeze(1)).squeeze(1)


def energy(logits: torch.Tensor) -> torch.Tensor:
    """E(x) = -logsumexp(f(x)); low on ID data."""
    return -torch.logsumexp(logits, dim=1)


class FeatureClassifier(nn.Module):
    """encoder (image -> unit feature z) then head (z -> logits); ``forward`` gives the logits."""

    def __init__(self, encoder: TextAlignedEncoder, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, n_classes)

    @torch.no_grad()
    def init_head_from_anchors(self, anchors: torch.Tensor, temperature: float) -> None:
        """Start as the anchor classifier cos(z, T(y))/t the encoder was trained with."""
        self.head.weight.copy_(F.normalize(anchors.float(), dim=1) / temperature)
        self.head.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.embed(x)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of feature vectors of any norm (sampled vectors come scaled to the anchor norm)."""
        return self.head(F.normalize(z, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class OODClassifier:
    """A trained classifier f and its phi; ``uses_outliers`` is False for a CE-only baseline (phi untrained)."""

    model: TextAlignedEncoder | FeatureClassifier
    phi: EnergyHead
    class_names: list[str]
    config: OODTrainConfig
    epoch: int
    history: list[dict]
    uses_outliers: bool
    outlier_note: str = ""  # which stored outliers were used (the verification filter's count), for the CLI


def penultimate(model: TextAlignedEncoder | FeatureClassifier, x: torch.Tensor) -> torch.Tensor:
    """The features the classification head reads (``head_of(model)(penultimate(model, x)) == model(x)``)."""
    if isinstance(model, FeatureClassifier):
        return model.features(x)
    return model.backbone((x - model.mean) / model.std)


def head_of(model: TextAlignedEncoder | FeatureClassifier) -> Callable[[torch.Tensor], torch.Tensor]:
    """The classification head: penultimate features -> logits."""
    return model.classify if isinstance(model, FeatureClassifier) else model.head


def build_classifier(config: OODTrainConfig, n_classes: int, feature_dim: int | None = None):
    """The plain classifier (old checkpoints), or encoder + head when ``feature_dim`` is given."""
    torch.manual_seed(config.seed)
    model: TextAlignedEncoder | FeatureClassifier
    if feature_dim is None:
        model = build_encoder(config.arch, n_classes, width=config.width, mean=config.mean, std=config.std)
    else:
        encoder = build_encoder(config.arch, feature_dim, width=config.width, mean=config.mean, std=config.std)
        model = FeatureClassifier(encoder, n_classes)
    return model, EnergyHead(config.phi_hidden)


def save_ood_checkpoint(
    path: Path,
    model,
    phi,
    optimizer,
    scheduler,
    config: OODTrainConfig,
    class_names,
    epoch,
    history,
    uses_outliers: bool,
) -> None:
    state = {
        "kind": "ood_classifier",
        "config": config.model_dump(mode="json"),
        "model": model.state_dict(),
        "phi": phi.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "class_names": list(class_names),
        "epoch": epoch,
        "history": history,
        "uses_outliers": uses_outliers,
    }
    if isinstance(model, FeatureClassifier):  # the loader rebuilds it without the encoder file
        state["feature_dim"] = model.encoder.dim
    write_checkpoint(path, state)


def read_ood_checkpoint(path: str | Path) -> dict:
    return read_checkpoint(
        path, kind="ood_classifier", default_name=CHECKPOINT_NAME, what="an OOD classifier checkpoint (from train-ood)"
    )


def load_ood_classifier(path: str | Path, device: str | torch.device | None = None) -> OODClassifier:
    state = read_ood_checkpoint(path)
    config = OODTrainConfig.model_validate(state["config"])
    model, phi = build_classifier(config, len(state["class_names"]), state.get("feature_dim"))
    model.load_state_dict(state["model"])
    phi.load_state_dict(state["phi"])
    device = device or default_device()
    return OODClassifier(
        model.to(device).eval(),
        phi.to(device).eval(),
        list(state["class_names"]),
        config,
        int(state["epoch"]),
        list(state["history"]),
        bool(state["uses_outliers"]),
    )
