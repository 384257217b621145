"""pytorch-ood's post-hoc detectors on one model: the registry, the model split, feature extraction, the wrapper.

``PytorchOODDetector`` is where pytorch-ood's sign (higher = more OOD) becomes the project's (``api.SCORE_SIGN``,
higher = more ID): ``score`` negates what pytorch-ood predicts, and nothing downstream converts again. Each
detector runs pytorch-ood's own class on one representation of the model, extracted once per dataset by
``extract`` and shared by every detector:

- ``logits``: the model's output;
- ``features``: the penultimate feature (the input of the final linear layer: the backbone's pooled output for a
  plain classifier, the unit text-aligned feature z for an encoder + head model) with that layer's W and b;
- ``maps``: the same feature viewed as D x 1 x 1 feature maps, for the activation-shaping detectors (ReAct, ASH,
  SCALE, VRA), which then run the final layer on the shaped activations (ReAct's paper shapes exactly this layer);
- ``inputs``: images, for detectors that backpropagate to the input (ODIN).

Feature detectors run on the CPU with a copy of the final layer, so fitting never moves the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data import ImageData
from ..errors import InputError

if TYPE_CHECKING:  # pytorch-ood is imported when a detector is built
    from pytorch_ood.api import Detector as OODDetector

Representation = Literal["logits", "features", "maps", "inputs"]


@dataclass(frozen=True)
class DetectorSpec:
    """How to build one pytorch-ood detector: its representation, a factory and what the defaults are."""

    representation: Representation
    build: Callable[..., OODDetector]  # (parts: ModelParts, **params)
    about: str
    defaults: dict = field(default_factory=dict)


@dataclass
class ModelParts:
    """A classifier split at its final linear layer: ``logits == head(penultimate(x))``."""

    model: nn.Module  # images -> logits
    penultimate: Callable[[torch.Tensor], torch.Tensor]  # images -> (B, D)
    head: nn.Linear  # the final layer, on the model's device (a CPU copy is made for the detectors)
    std: tuple[float, float, float]  # the model's input normalisation (ODIN's step is in normalised units)


@dataclass
class Features:
    """One dataset pushed through the model once: what every detector needs (CPU tensors)."""

    penultimate: torch.Tensor  # (N, D) float32
    logits: torch.Tensor  # (N, C) float32
    labels: torch.Tensor  # (N,) long
    images: Dataset | None = None  # kept for the ``inputs`` detectors


def model_parts(model) -> ModelParts:
    """Split an ``OODClassifier`` (or its ``model``) at the final linear layer."""
    from functools import partial

    from ..encoding.encoder import TextAlignedEncoder
    from .classifier import FeatureClassifier, OODClassifier, penultimate

    if isinstance(model, OODClassifier):
        model = model.model
    if not isinstance(model, (FeatureClassifier, TextAlignedEncoder)):
        raise TypeError(f"model: expected an OODClassifier, FeatureClassifier or TextAlignedEncoder, got {type(model)}")
    encoder = model.encoder if isinstance(model, FeatureClassifier) else model
    # model.head, not head_of(model): a FeatureClassifier's features are unit already, and the detectors need the Linear
    return ModelParts(model, partial(penultimate, model), model.head, tuple(encoder.std.flatten().tolist()))


def _head_cpu(parts: ModelParts) -> nn.Linear:
    return copy.deepcopy(parts.head).cpu().float().eval()


def _maps_head(parts: ModelParts) -> Callable[[torch.Tensor], torch.Tensor]:
    head = _head_cpu(parts)
    return lambda maps: head(maps.flatten(1))


def _wb(parts: ModelParts) -> tuple[torch.Tensor, torch.Tensor]:
    head = _head_cpu(parts)
    return head.weight.detach(), head.bias.detach()


def _vim(parts: ModelParts, d: int | None = None):
    from pytorch_ood.detector import ViM

    w, b = _wb(parts)
    return ViM(None, d=d if d is not None else max(1, w.shape[1] // 2), w=w, b=b)


def _dice(parts: ModelParts, p: float = 0.7):
    from pytorch_ood.detector import DICE

    w, b = _wb(parts)
    return DICE(None, w=w, b=b, p=p)


def _spec(representation: Representation, cls: str, about: str, factory=None, **defaults) -> DetectorSpec:
    """A spec whose factory calls pytorch-ood's ``cls`` in the usual way for its representation."""

    def build(parts: ModelParts, **params):
        import pytorch_ood.detector as pod

        kind = getattr(pod, cls)
        kw = {**defaults, **params}
        if representation == "logits":
            return kind(None, **kw)
        if representation == "maps":
            return kind(backbone=None, head=_maps_head(parts), **kw)
        if representation == "inputs":
            return kind(parts.model, norm_std=list(parts.std), **kw)
        if cls in ("SHE", "fDBD", "NCI", "NNGuide", "LTS"):
            return kind(None, _head_cpu(parts), **kw)
        return kind(None, **kw)

    return DetectorSpec(representation, factory or build, about, defaults)


DETECTORS: dict[str, DetectorSpec] = {
    "msp": _spec("logits", "MaxSoftmax", "maximum softmax probability (Hendrycks & Gimpel)"),
    "maxlogit": _spec("logits", "MaxLogit", "largest logit"),
    "energy": _spec("logits", "EnergyBased", "energy -T logsumexp(f/T)"),
    "entropy": _spec("logits", "Entropy", "entropy of the softmax"),
    "gen": _spec("logits", "GEN", "generalised entropy of the top-M softmax"),
    "klmatching": _spec("logits", "KLMatching", "KL to the typical softmax of the predicted class (fitted)"),
    "odin": _spec("inputs", "ODIN", "softmax at temperature T after an input-gradient step"),
    "mahalanobis": _spec("features", "Mahalanobis", "class means and a shared covariance (fitted)"),
    "rmd": _spec("features", "RMD", "relative Mahalanobis: minus a class-agnostic Gaussian (fitted)"),
    "knn": _spec("features", "KNN", "distance to the k-th nearest normalised train feature (fitted)", k=50),
    "vim": DetectorSpec("features", _vim, "virtual logit of the residual off the principal subspace (fitted)"),
    "dice": DetectorSpec("features", _dice, "energy after sparsifying the final layer (fitted)", {"p": 0.7}),
    "she": _spec("features", "SHE", "similarity to the mean feature of correct train predictions (fitted)"),
    "fdbd": _spec("features", "fDBD", "feature distance to the decision boundaries (fitted)"),
    "nci": _spec("features", "NCI", "alignment of the centred feature with the predicted class weight (fitted)"),
    "nnguide": _spec("features", "NNGuide", "energy guided by nearest train neighbours (fitted)", k=10),
    "lts": _spec("features", "LTS", "logit temperature from the feature's activation scale"),
    "react": _spec("maps", "ReAct", "energy after clipping the penultimate activations (fitted)", percentile=0.9),
    "ash": _spec("maps", "ASH", "energy after pruning and scaling the penultimate activations", percentile=0.65),
    "scale": _spec("maps", "SCALE", "energy after rescaling the penultimate activations", percentile=0.65),
    "vra": _spec("maps", "VRA", "energy after clipping activations into a fitted band (fitted)"),
}


def _as_loader(data, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    return DataLoader(data.dataset if isinstance(data, ImageData) else data, batch_size=batch_size)


@torch.no_grad()
def extract(
    model, data: ImageData | Dataset | DataLoader, *, batch_size: int = 256, progress: bool = False
) -> Features:
    """Penultimate features, logits and labels of every image (the model in eval mode, on its own device)."""
    parts = model_parts(model)
    parts.model.eval()
    device = next(parts.model.parameters()).device
    z, logits, labels = [], [], []
    name = getattr(data, "name", "") or "data"
    for x, y in tqdm(
        _as_loader(data, batch_size), desc=f"features {name}", unit="batch", disable=not progress, leave=False
    ):
        f = parts.penultimate(x.to(device))
        z.append(f.float().cpu())
        logits.append(parts.head(f).float().cpu())
        labels.append(torch.as_tensor(y).long())
    images = data.dataset if isinstance(data, (ImageData, DataLoader)) else data
    return Features(torch.cat(z), torch.cat(logits), torch.cat(labels), images)


class PytorchOODDetector:
    """One fitted pytorch-ood detector on one model (an ``api.Detector``): ``score`` is higher = more ID, the
    negation of pytorch-ood's outlier score (``outlier_score``)."""

    def __init__(self, name: str, model, **params):
        if name not in DETECTORS:
            raise InputError("score", f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
        self.name, self.spec, self.model = name, DETECTORS[name], model
        self.parts = model_parts(model)
        try:
            self.detector = self.spec.build(self.parts, **params)
        except TypeError as exc:  # an unknown keyword
            raise InputError(f"params.{name}", str(exc)) from exc
        self.fitted = not getattr(self.detector, "requires_fit", False)

    def fit(self, train: ImageData | Dataset | DataLoader | Features, *, batch_size: int = 256) -> PytorchOODDetector:
        """Fit on the ID train set (its labels are used); a no-op for detectors that need no fit."""
        if self.fitted:
            return self
        feats = train if isinstance(train, Features) else extract(self.model, train, batch_size=batch_size)
        try:
            if self.spec.representation == "logits":
                self.detector.fit_logits(feats.logits, feats.labels)
            elif self.spec.representation == "maps":
                self.detector.fit_feature_maps(feats.penultimate[:, :, None, None], feats.labels)
            else:
                self.detector.fit_features(feats.penultimate, feats.labels)
        except (ValueError, RuntimeError) as exc:  # e.g. k above the train size, a singular covariance
            raise InputError("score", f"{self.name} could not be fitted on the train set: {exc}") from exc
        self.fitted = True
        return self

    def features(self, data: torch.Tensor | ImageData | Dataset | Features, *, batch_size: int = 256) -> Features:
        """``data`` pushed through the model once (a batch of images, a dataset), or as given (``Features``)."""
        if isinstance(data, Features):
            return data
        if isinstance(data, torch.Tensor):
            with torch.no_grad():
                device = next(self.parts.model.parameters()).device
                f = self.parts.penultimate(data.to(device))
                return Features(f.float().cpu(), self.parts.head(f).float().cpu(), torch.zeros(len(f)).long())
        return extract(self.model, data, batch_size=batch_size)

    def score(self, data: torch.Tensor | ImageData | Dataset | Features, *, batch_size: int = 256) -> np.ndarray:
        """Scores (higher = more ID) of a batch of images, a dataset, or its extracted ``Features``: pytorch-ood's
        outlier score negated, the one place its sign is converted."""
        return -self.outlier_score(data, batch_size=batch_size)

    def outlier_score(
        self, data: torch.Tensor | ImageData | Dataset | Features, *, batch_size: int = 256
    ) -> np.ndarray:
        """pytorch-ood's own score (higher = more OOD), as its ``predict`` gives it."""
        if not self.fitted:
            raise InputError("score", f"{self.name} must be fitted on the ID train set first")
        rep = self.spec.representation
        if rep == "inputs":
            images = data.images if isinstance(data, Features) else data
            batches = [images] if isinstance(images, torch.Tensor) else (x for x, _ in _as_loader(images, batch_size))
            device = next(self.parts.model.parameters()).device
            self.parts.model.eval()
            return np.concatenate([self.detector.predict(x.to(device)).detach().cpu().numpy() for x in batches])
        data = self.features(data, batch_size=batch_size)
        with torch.no_grad():
            if rep == "logits":
                out = self.detector.predict_logits(data.logits)
            elif rep == "maps":
                out = self.detector.predict_feature_maps(data.penultimate[:, :, None, None])
            else:
                out = self.detector.predict_features(data.penultimate)
        return out.detach().cpu().double().numpy()
