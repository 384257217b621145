"""OOD-regularised training: L = CE + beta * L_ood on ID images and generated outliers.

L_ood is the binary logistic loss of phi(E(f(x))), where E = -logsumexp of
the classifier's logits and phi is a small MLP; ID images are labelled 1,
outliers 0 (DREAM-OOD's and VOS's loss). With ``ood_loss="outlier_exposure"``
it is Outlier Exposure's instead: the cross-entropy from the outliers' softmax
to the uniform distribution, which asks nothing of the ID images' energies and
leaves phi untrained. Each step takes one ID batch and one outlier batch; an
epoch is as long as the longer of the two loaders and the shorter one is
cycled (and reshuffled), so neither set is truncated. Outliers come from the result store
(any number of its datasets) and are resized to the ID resolution.

With beta = 0 or no outlier datasets it is plain CE training: the baseline.

Feature-space outliers (VOS / NPOS style, a cheap product mode and a fast way
to rank samplers): with ``init_encoder`` the classifier is the text-aligned
encoder (image -> unit 768-d feature z, the space the fits and samples live
in) followed by a linear head initialised to the anchor classifier
cos(z, T(y))/t. ID images go through the whole network; sampled vectors go
straight into the head, then energy and phi, with no decoding, so the
outliers shape the head and, through the ID side of L_ood, the features. The
head is trainable: with a fixed anchor head the outliers' energies could not
change and would only set phi's threshold. Because training moves the
feature space away from the one the vectors were drawn in, ``redraw_every``
re-encodes the ID set every few epochs, refits the class densities and lets
the sample's own sampler draw afresh (VOS re-estimates its class Gaussians
from the current features for the same reason).

In-training virtual outliers (``virtual_outliers``: ``vos`` or ``npos``,
``oodsynth.training.virtual_outliers``): each step the ID batch's
penultimate features fill a per-class queue; after the sampler's warm-up (a
share of the epochs; none on a fine-tune, whose features are trained already)
and once the queue is full, ``ood_batch_size`` outlier features are drawn from
it and go through the classification head into L_ood beside the ID rows, as
VOS and NPOS do. They draw from their own generator, so the ID batches match
a CE-only run of the same seed step for step.

Fine-tuning (Outlier Exposure's protocol): with ``init_classifier`` the run
starts from a train-ood checkpoint, typically a CE-only one, and trains
``epochs`` more with its own loss. A CE-only fine-tune of the same checkpoint
with the same seed sees the same ID batches in the same order (the outliers
draw from their own generator here), so the pair differs only by L_ood: the
paired difference measures the outliers, not two training trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoints import read_checkpoint, restore_training, write_checkpoint
from ..data import ImageData
from ..densities import DENSITY_KINDS
from ..device import default_device
from ..encoding.encoder import ENCODER_ARCHS, TextAlignedEncoder, build_encoder
from ..errors import InputError
from .feature_outliers import FeatureOutliers, load_feature_outliers, redraw_feature_outliers
from .virtual_outliers import VIRTUAL_OUTLIERS, FeatureQueue, get_virtual_sampler

CHECKPOINT_NAME = "ood.pt"
OOD_LOSSES = ("energy_logistic", "outlier_exposure")


class OODTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: Literal[ENCODER_ARCHS] = "resnet18"  # type: ignore[valid-type]
    width: int = Field(64, ge=1)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1, description="ID images per step")
    ood_batch_size: int = Field(128, ge=1, description="outlier images per step")
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    beta: float = Field(
        0.5,
        ge=0,
        description="weight of L_ood; 0 = CE-only baseline. 0.5 measured best of "
        "2.5 / 0.5 / 0.25 in the OOD lab (2.5: near-OOD FPR95 13-20 points worse)",
    )
    ood_loss: Literal[OOD_LOSSES] = Field(
        "energy_logistic",
        description="energy_logistic: phi's logistic loss on "  # type: ignore[valid-type]
        "the energy (DREAM-OOD); outlier_exposure: outliers' softmax to uniform (OE)",
    )
    phi_hidden: int = Field(16, ge=1)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    dataset: str = ""
    image_size: int = Field(32, ge=1)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    store: str | None = None
    outlier_datasets: list[str] = Field(default_factory=list)
    max_id_percentile: Annotated[float, Field(ge=0, le=100)] | Literal["auto"] | None = Field(
        "auto",
        description="keep only verified outliers: re-encoded at or below this ID percentile "
        "(oodsynth.decoding.verification); auto: DEFAULT_MAX_ID_PERCENTILE when every stored image is verified, else all; "
        "None: all",
    )
    init_encoder: str | None = Field(
        None,
        description="text-aligned encoder checkpoint to start from; gives the "
        "model a 768-d feature and an anchor-initialised head (needed for feature outliers)",
    )
    init_classifier: str | None = Field(
        None,
        description="train-ood checkpoint (a run folder or ood.pt; typically "
        "CE only, beta 0) to fine-tune from; its architecture fields replace these",
    )
    redraw_every: int = Field(
        0, ge=0, description="feature outliers: redraw them from the current features every this many epochs; 0 = never"
    )
    redraw_density: Literal[DENSITY_KINDS] = Field("gaussian_full", description="density kind refitted for a redraw")  # type: ignore[valid-type]
    virtual_outliers: Literal[VIRTUAL_OUTLIERS] | None = Field(  # type: ignore[valid-type]
        None,
        description="outliers drawn in training on the penultimate features: vos (low-likelihood samples of "
        "class Gaussians), npos (k-NN boundary perturbations); ood_batch_size of them per step; None = none",
    )
    virtual_params: dict = Field(default_factory=dict, description="the virtual-outlier sampler's parameters")

    @field_validator("virtual_params")
    @classmethod
    def _virtual_params_known(cls, v: dict, info: ValidationInfo) -> dict:
        """Fail when the config is made, not after the warm-up epochs: every parameter the sampler's own."""
        method = info.data.get("virtual_outliers")
        if v and method is None:
            raise ValueError("given without virtual_outliers")
        if method is not None:
            try:
                get_virtual_sampler(method, v)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"{method}: {problems}") from None
        return v


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


def ood_loss(kind: str, logits: torch.Tensor, n_id: int, phi: EnergyHead) -> torch.Tensor:
    """L_ood of one step; ``logits`` holds the ``n_id`` ID rows first, then the outliers' rows."""
    if kind == "outlier_exposure":  # cross-entropy to the uniform distribution, averaged over the outliers
        return -logits[n_id:].log_softmax(dim=1).mean(dim=1).mean()
    target = torch.cat([torch.ones(n_id), torch.zeros(len(logits) - n_id)]).to(logits.device)
    return F.binary_cross_entropy_with_logits(phi(energy(logits)), target)


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


def outlier_dataset(
    store: str | Path, datasets: list[str], image_size: int, max_id_percentile: float | Literal["auto"] | None = None
) -> Dataset:
    """The store's outliers as tensors at the ID resolution (only the verified ones under a threshold)."""
    from torchvision import transforms

    from .outlier_dataset import StoredOutliers

    transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    ds = StoredOutliers(store, datasets, transform=transform, max_id_percentile=max_id_percentile)
    if len(ds) == 0 and ds.threshold is not None:
        raise InputError(
            "max_id_percentile", f"no image of {datasets} in {store} is at or below ID percentile {ds.threshold:g}"
        )
    if len(ds) == 0:
        raise InputError("outlier_datasets", f"{datasets} in {store} hold no images")
    return ds


def penultimate(model: TextAlignedEncoder | FeatureClassifier, x: torch.Tensor) -> torch.Tensor:
    """The features the classification head reads (``head_of(model)(penultimate(model, x)) == model(x)``)."""
    if isinstance(model, FeatureClassifier):
        return model.features(x)
    return model.backbone((x - model.mean) / model.std)


def head_of(model: TextAlignedEncoder | FeatureClassifier) -> Callable[[torch.Tensor], torch.Tensor]:
    """The classification head: penultimate features -> logits."""
    return model.classify if isinstance(model, FeatureClassifier) else model.head


def _cycle(loader: DataLoader) -> Iterator:
    """Endless passes over a loader (a fresh shuffle each pass)."""
    while True:
        yield from loader


def _save(
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


def _read(path: str | Path) -> dict:
    return read_checkpoint(
        path, kind="ood_classifier", default_name=CHECKPOINT_NAME, what="an OOD classifier checkpoint (from train-ood)"
    )


def _build(config: OODTrainConfig, n_classes: int, feature_dim: int | None = None):
    """The plain classifier (old checkpoints), or encoder + head when ``feature_dim`` is given."""
    torch.manual_seed(config.seed)
    if feature_dim is None:
        model = build_encoder(config.arch, n_classes, width=config.width, mean=config.mean, std=config.std)
    else:
        encoder = build_encoder(config.arch, feature_dim, width=config.width, mean=config.mean, std=config.std)
        model = FeatureClassifier(encoder, n_classes)
    return model, EnergyHead(config.phi_hidden)


def _from_encoder(config: OODTrainConfig, train: ImageData) -> tuple[OODTrainConfig, FeatureClassifier, EnergyHead]:
    """Encoder + anchor-initialised head from ``config.init_encoder``; the architecture fields come from it."""
    from ..encoding.training import load_encoder

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
    model, phi = _build(config, len(train.class_names), feature_dim=ckpt.anchors.shape[1])
    model.encoder.load_state_dict(ckpt.model.state_dict())
    model.init_head_from_anchors(torch.from_numpy(ckpt.anchors), enc.temperature)
    return config, model, phi


def _from_classifier(config: OODTrainConfig, train: ImageData) -> tuple[OODTrainConfig, nn.Module, EnergyHead]:
    """The model of ``config.init_classifier`` (weights only: a fresh optimiser, schedule and phi)."""
    try:
        state = _read(config.init_classifier)
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
    model, phi = _build(config, len(train.class_names), state.get("feature_dim"))
    model.load_state_dict(state["model"])
    return config, model, phi


def load_ood_classifier(path: str | Path, device: str | torch.device | None = None) -> OODClassifier:
    state = _read(path)
    config = OODTrainConfig.model_validate(state["config"])
    model, phi = _build(config, len(state["class_names"]), state.get("feature_dim"))
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


class _VectorBatches:
    """Endless shuffled batches of feature outliers (a fresh permutation each pass); ``replace`` swaps the set."""

    def __init__(self, vectors: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.batch_size, self.generator = batch_size, generator
        self.replace(vectors)

    def replace(self, vectors: torch.Tensor) -> None:
        self.vectors, self.order, self.pos = vectors, torch.empty(0, dtype=torch.long), 0

    def next(self) -> torch.Tensor:
        if self.pos >= len(self.order):
            self.order, self.pos = torch.randperm(len(self.vectors), generator=self.generator), 0
        rows = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.vectors[rows]


def train_ood(
    config: OODTrainConfig,
    train: ImageData,
    out_dir: str | Path,
    *,
    outliers: Dataset | None = None,
    feature_outliers: FeatureOutliers | str | Path | object | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = True,
) -> OODClassifier:
    """Train f (and phi) on ``train`` plus outlier images and/or feature-space outlier vectors.

    ``outliers`` (default: the config's store datasets) are images. ``feature_outliers`` are vectors
    in the encoder's feature space: a ``StoredSample`` (registry), a ``SampleResult``, a
    ``FeatureOutliers`` or the path of an ``.npz`` with ``vectors`` and ``class_index`` (what
    ``oodsynth sample --out`` writes); they need ``config.init_encoder``.
    """
    device = torch.device(device) if device else default_device()
    if outliers is None and config.outlier_datasets:
        if not config.store:
            raise InputError("store", "outlier_datasets are given but no result store folder")
        outliers = outlier_dataset(config.store, config.outlier_datasets, config.image_size, config.max_id_percentile)
    if feature_outliers is not None:
        if not config.init_encoder:
            raise InputError(
                "init_encoder",
                "feature_outliers need a text-aligned encoder to start from (the space the vectors were sampled in)",
            )
        feature_outliers = load_feature_outliers(feature_outliers, n_classes=len(train.class_names))
    if config.redraw_every and feature_outliers is not None and not feature_outliers.method:
        raise InputError(
            "redraw_every",
            "the feature outliers do not record the sampler that drew them; "
            "pass a stored sample (or its .npz from 'oodsynth sample --out')",
        )
    use_images = outliers is not None and config.beta > 0
    use_features = feature_outliers is not None and config.beta > 0
    virtual = (
        get_virtual_sampler(config.virtual_outliers, config.virtual_params)
        if config.virtual_outliers is not None and config.beta > 0
        else None
    )
    path = Path(out_dir) / CHECKPOINT_NAME
    if config.init_encoder and config.init_classifier:
        raise InputError("init_classifier", "give init_encoder or init_classifier, not both")
    if config.init_classifier:
        config, model, phi = _from_classifier(config, train)
    elif config.init_encoder:
        config, model, phi = _from_encoder(config, train)
        if use_features and feature_outliers.vectors.shape[1] != model.encoder.dim:
            raise InputError(
                "feature_outliers",
                f"vectors have dim {feature_outliers.vectors.shape[1]}, the encoder's features {model.encoder.dim}",
            )
    else:
        model, phi = _build(config, len(train.class_names))
    model.to(device)
    phi.to(device)
    optimizer = torch.optim.SGD(
        list(model.parameters()) + list(phi.parameters()),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    gen = torch.Generator().manual_seed(config.seed)
    id_loader = DataLoader(
        train.dataset, batch_size=config.batch_size, shuffle=True, generator=gen, num_workers=config.num_workers
    )
    # a fine-tune shuffles the outliers with their own generator, so that its ID batches match a CE-only fine-tune
    # of the same checkpoint step for step; from-scratch runs keep the shared one, so their measured tables reproduce
    ood_gen = torch.Generator().manual_seed(config.seed + 1) if config.init_classifier else gen
    ood_loader = (
        DataLoader(
            outliers, batch_size=config.ood_batch_size, shuffle=True, generator=ood_gen, num_workers=config.num_workers
        )
        if use_images
        else None
    )
    # vectors are cheap: they never lengthen an epoch, only image outliers may
    steps_per_epoch = max(len(id_loader), len(ood_loader)) if use_images else len(id_loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    start, history = 0, []
    if resume and path.exists():
        state = _read(path)
        start, history = restore_training(state, model=model, phi=phi, optimizer=optimizer, scheduler=scheduler)
    id_iter = _cycle(id_loader)
    ood_iter = _cycle(ood_loader) if use_images else None
    vectors = _VectorBatches(feature_outliers.unit_tensor(), config.ood_batch_size, gen) if use_features else None
    queue, virtual_from, virtual_gen = None, 0, None
    if virtual is not None:
        virtual_gen = torch.Generator(device=device).manual_seed(config.seed + 2)
        virtual_from = 0 if config.init_classifier else math.ceil(virtual.params.warmup * config.epochs)
    bar = tqdm(
        total=(config.epochs - start) * steps_per_epoch,
        desc="train-ood",
        unit="step",
        disable=progress is not True,
        leave=False,
    )
    for epoch in range(start, config.epochs):
        if use_features and config.redraw_every and epoch > 0 and (epoch % config.redraw_every == 0 or epoch == start):
            feature_outliers = redraw_feature_outliers(
                model, train, feature_outliers, config.redraw_density, seed=config.seed + epoch
            )
            vectors.replace(feature_outliers.unit_tensor())
        model.train()
        phi.train()
        sums = {"loss": 0.0, "ce": 0.0, "ood": 0.0}
        for _ in range(steps_per_epoch):
            x_id, y = next(id_iter)
            x_id, y = x_id.to(device), y.to(device)
            x_ood = next(ood_iter)[0].to(device) if use_images else x_id[:0]
            if virtual is None:
                logits = model(torch.cat([x_id, x_ood]))
            else:
                features = penultimate(model, torch.cat([x_id, x_ood]))
                logits = head_of(model)(features)
                if queue is None:
                    queue = FeatureQueue(len(train.class_names), virtual.params.queue_size, features.shape[1], device)
                queue.push(features[: len(y)], y)
            ce = F.cross_entropy(logits[: len(y)], y)
            if use_features:
                logits = torch.cat([logits, model.classify(vectors.next().to(device))])
            drawing = virtual is not None and epoch >= virtual_from and queue.full
            if drawing:
                virtual_features, _ = virtual.sample(queue, config.ood_batch_size, virtual_gen)
                logits = torch.cat([logits, head_of(model)(virtual_features)])
            if use_images or use_features or drawing:
                l_ood = ood_loss(config.ood_loss, logits, len(y), phi)
                loss = ce + config.beta * l_ood
            else:
                l_ood = torch.zeros((), device=device)
                loss = ce
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for k, v in (("loss", loss), ("ce", ce), ("ood", l_ood)):
                sums[k] += v.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, ce=f"{ce.item():.3f}", ood=f"{l_ood.item():.3f}")
        history.append({"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}})
        _save(
            path,
            model,
            phi,
            optimizer,
            scheduler,
            config,
            train.class_names,
            epoch + 1,
            history,
            use_images or use_features or virtual is not None,
        )
        if callable(progress):
            progress(epoch + 1, config.epochs)
    bar.close()
    return OODClassifier(
        model.eval(),
        phi.eval(),
        list(train.class_names),
        config,
        config.epochs,
        history,
        use_images or use_features or virtual is not None,
        getattr(outliers, "verification", ""),
    )
