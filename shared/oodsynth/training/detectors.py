"""Post-hoc OOD detectors from pytorch-ood, fitted to a trained classifier; one registry for evaluate and the lab.

The API (scores follow pytorch-ood: **higher = more OOD**; ``evaluate_detectors`` negates them for
``training.metrics``, whose convention is higher = more ID)::

    det = build_detector("vim", model, d=64)       # model: OODClassifier, FeatureClassifier or TextAlignedEncoder
    det.fit(train)                                  # ID train set: ImageData, Dataset, DataLoader or Features
    det.score(images)                               # a (B, C, H, W) tensor, ImageData/Dataset or Features -> numpy (B,)
    report = evaluate_detectors(model, train, id_test, {"digits:ood": ood}, names=["all"])  # an EvaluationReport

``DETECTORS`` names every detector (``all`` = every one of them); a name joining two or more with ``+``
(``energy+mahalanobis``) is a ``FusedDetector`` (at the end of this module). Each runs pytorch-ood's own class on one
representation of the model, extracted once per dataset by ``extract`` and shared by every detector:

- ``logits``: the model's output;
- ``features``: the penultimate feature (the input of the final linear layer: the backbone's pooled output for a
  plain classifier, the unit text-aligned feature z for an encoder + head model) with that layer's W and b;
- ``maps``: the same feature viewed as D x 1 x 1 feature maps, for the activation-shaping detectors (ReAct, ASH,
  SCALE, VRA), which then run the final layer on the shaped activations (ReAct's paper shapes exactly this layer);
- ``inputs``: images, for detectors that backpropagate to the input (ODIN).

Feature detectors run on the CPU with a copy of the final layer, so fitting never moves the model.

Left out, because they do not fit these models: GMM (per-class covariances are singular when the feature is wider
than a class is large), MultiMahalanobis, Gram and NACUE (several hooked layers), MCD (no dropout), RankFeat (an
SVD of real spatial maps), OpenMax (its own API), TemperatureScaling (fits T on held-out data, not the train set),
WeightedEBO (needs class weights), MCM (CLIP), GradNorm and MahalanobisODIN (input gradients of every sample,
slower than the rest put together). The project's own scores stay in ``training.evaluation`` because pytorch-ood
has no equivalent: ``phi`` (the logistic head trained with the outliers) and ``density`` (the fitted class
densities of ``densities/`` on the text-aligned feature, of any density kind, without a classifier).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data import ImageData
from ..errors import InputError
from .metrics import accuracy
from .report import EvaluationReport

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


class Detector:
    """One fitted pytorch-ood detector on one model; ``score`` gives numpy outlier scores (higher = more OOD)."""

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

    def fit(self, train: ImageData | Dataset | DataLoader | Features, *, batch_size: int = 256) -> Detector:
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
        """Outlier scores (higher = more OOD) of a batch of images, a dataset, or its extracted ``Features``."""
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


def build_detector(name: str, model, **params) -> Detector | FusedDetector:
    """``DETECTORS[name]`` on ``model``, with pytorch-ood keyword ``params`` (e.g. ``k=100``, ``d=64``); a fused
    name (``energy+mahalanobis``, ``FusedDetector``) takes ``params`` per part (``knn={"k": 1}``)."""
    if is_fused(name):
        return FusedDetector(name, model, params)
    return Detector(name, model, **params)


def resolve_names(names: Iterable[str] | None) -> list[str]:
    """Detector names with ``all`` expanded, duplicates dropped, order kept; unknown names name the field. A fused
    name (``energy+vim``) is one detector; ``all`` does not include fused ones."""
    out: list[str] = []
    for name in names or ["all"]:
        for n in DETECTORS if name == "all" else [name]:
            if is_fused(n):
                fused_parts(n)  # names the field when a part is unknown
            elif n not in DETECTORS:
                raise InputError("score", f"unknown detector {n!r}; choose from all, {', '.join(DETECTORS)}")
            if n not in out:
                out.append(n)
    return out


def evaluate_detectors(
    model,
    train: ImageData | Dataset | DataLoader | Features,
    id_data: ImageData,
    ood_sets: dict[str, ImageData],
    *,
    names: Sequence[str] | None = None,
    params: dict[str, dict] | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> EvaluationReport:
    """An ``EvaluationReport`` (FPR95 / AUROC / AUPR per OOD set) for each detector, fitted on ``train``.

    Every dataset goes through the model once; the detectors share its ``Features``.
    """
    if not ood_sets:
        raise InputError("ood", "give at least one OOD dataset")
    names = resolve_names(names)
    params = params or {}  # per detector; a fused detector takes them all, per part
    detectors = [build_detector(n, model, **(params if is_fused(n) else params.get(n, {}))) for n in names]
    if any(not d.fitted for d in detectors):
        train_feats = train if isinstance(train, Features) else extract(model, train, batch_size=batch_size)
        for det in detectors:
            det.fit(train_feats)
    id_feats = extract(model, id_data, batch_size=batch_size, progress=progress)
    report = EvaluationReport(
        accuracy(id_feats.logits.argmax(1).numpy(), id_feats.labels.numpy()), len(id_feats.labels)
    )
    # negated: the report's metrics take higher = more ID
    id_scores = {d.name: -d.score(id_feats, batch_size=batch_size) for d in detectors}
    for set_name, data in ood_sets.items():
        feats = extract(model, data, batch_size=batch_size, progress=progress)
        report.add_set(set_name, id_scores, {d.name: -d.score(feats, batch_size=batch_size) for d in detectors})
    return report


# Fused detectors: several pytorch-ood detectors on one model, each standardised on the ID train set, summed.
#
# A name such as ``energy+mahalanobis`` is one detector. Why fuse: a logit score (energy) and a feature-space
# distance (Mahalanobis, KNN, ViM) fail on different inputs. Energy separates the held-out classes that the
# classifier's logits see as unfamiliar, but ranks uniform noise or inverted images as confidently in-distribution
# (a known failure of logit scores); a class-conditional distance catches exactly those, and is weaker near the
# class boundaries. Each part's outlier score is centred and scaled by its mean and standard deviation on ID train
# images it was not fitted on (two-fold cross-fitting), so neither part's units decide; the sum is the fused score.
#
# pytorch-ood has no such combination (its detectors are single scores), so it is written here; the parts are
# pytorch-ood's own through ``Detector``, and ``FusedDetector`` has the same interface.

SEPARATOR = "+"


def is_fused(name: str) -> bool:
    return SEPARATOR in name


def fused_parts(name: str) -> list[str]:
    """The detector names in a fused name; each must be a known detector that scores features or logits."""
    parts = [p.strip() for p in name.split(SEPARATOR)]
    if len(parts) < 2 or len(set(parts)) != len(parts):
        raise InputError("score", f"{name!r}: a fused score names two or more different detectors, e.g. energy+vim")
    for p in parts:
        if p not in DETECTORS:
            raise InputError("score", f"{name!r}: unknown detector {p!r}; choose from {', '.join(DETECTORS)}")
        if DETECTORS[p].representation == "inputs":
            raise InputError("score", f"{name!r}: {p} needs input gradients and cannot be fused")
    return parts


class FusedDetector:
    """The sum of its parts' outlier scores, each standardised by its ID-train mean and std (higher = more OOD)."""

    def __init__(self, name: str, model, params: dict[str, dict] | None = None):
        self.name, self.model, self.params = name, model, params or {}
        self.parts = [Detector(p, model, **self.params.get(p, {})) for p in fused_parts(name)]  # none is fused
        self.fitted = False
        self.scale: list[tuple[float, float]] = []

    def fit(self, train: ImageData | Dataset | DataLoader | Features, *, batch_size: int = 256) -> FusedDetector:
        """Fit every part on the ID train set; each part's scale is the mean and std of its scores on ID data it
        was not fitted on (two folds of the train set, each scored by the part fitted on the other): in-sample
        scores are biased, and degenerate for KNN, whose nearest train neighbour is the sample itself."""
        feats = train if isinstance(train, Features) else extract(self.model, train, batch_size=batch_size)
        order = np.random.default_rng(0).permutation(len(feats.labels))
        folds = [torch.from_numpy(np.sort(f)) for f in np.array_split(order, 2)]

        def subset(idx: torch.Tensor) -> Features:
            return Features(feats.penultimate[idx], feats.logits[idx], feats.labels[idx])

        self.scale = []
        for part in self.parts:
            part.fit(feats)
            held_out = np.concatenate(
                [
                    build_detector(part.name, self.model, **self.params.get(part.name, {}))
                    .fit(subset(fit_on))
                    .score(subset(score_on))
                    for fit_on, score_on in (folds, folds[::-1])
                ]
            )
            sd = float(np.std(held_out))
            self.scale.append((float(np.mean(held_out)), sd if np.isfinite(sd) and sd > 0 else 1.0))
        self.fitted = True
        return self

    def score(self, data, *, batch_size: int = 256) -> np.ndarray:
        if not self.fitted:
            raise InputError("score", f"{self.name} must be fitted on the ID train set first")
        data = self.parts[0].features(data, batch_size=batch_size)  # once, shared by every part
        return np.sum([(p.score(data) - mu) / sd for p, (mu, sd) in zip(self.parts, self.scale)], axis=0)
