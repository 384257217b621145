"""OOD-regularised training: L = CE + beta * L_ood on ID images and generated outliers.

L_ood is the binary logistic loss of phi(E(f(x))), where E = -logsumexp of
the classifier's logits and phi is a small MLP; ID images are labelled 1,
outliers 0 (DREAM-OOD's and VOS's loss). With ``ood_loss="outlier_exposure"``
it is Outlier Exposure's instead: the cross-entropy from the outliers' softmax
to the uniform distribution, which asks nothing of the ID images' energies and
leaves phi untrained. Each step takes one ID batch and one outlier batch; an
epoch is as long as the longer of the two loaders and the shorter one is
cycled (and reshuffled), so neither set is truncated. Outliers come from the result store
(any number of its datasets) and are resized to the ID resolution. Streamed outliers
(``stream_outliers``: webdataset exports read through a shuffle buffer) have no length:
the ID set sets the epoch and the stream is cycled.

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

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from ..checkpoints import restore_training
from ..data import ImageData
from ..device import default_device
from ..encoding.encoder import TextAlignedEncoder
from ..errors import InputError
from .classifier import (
    CHECKPOINT_NAME,
    EnergyHead,
    FeatureClassifier,
    OODClassifier,
    energy,
    head_of,
    penultimate,
    read_ood_checkpoint,
    save_ood_checkpoint,
)
from .feature_outliers import FeatureOutliers, load_feature_outliers, redraw_feature_outliers
from .ood_config import OODTrainConfig
from .ood_model import build_model
from .outlier_dataset import outlier_dataset
from .outlier_mix import cheap_recipe_outliers, with_outlier_mix
from .virtual_outliers import FeatureQueue, VirtualOutlierSampler, get_virtual_sampler


def ood_loss(kind: str, logits: torch.Tensor, n_id: int, phi: EnergyHead) -> torch.Tensor:
    """L_ood of one step; ``logits`` holds the ``n_id`` ID rows first, then the outliers' rows."""
    if kind == "outlier_exposure":  # cross-entropy to the uniform distribution, averaged over the outliers
        return -logits[n_id:].log_softmax(dim=1).mean(dim=1).mean()
    target = torch.cat([torch.ones(n_id), torch.zeros(len(logits) - n_id)]).to(logits.device)
    return F.binary_cross_entropy_with_logits(phi(energy(logits)), target)


def _cycle(loader: DataLoader, field: str) -> Iterator:
    """Endless passes over a loader (a fresh shuffle each pass); a pass that yields nothing is an error, not a hang."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise InputError(field, "a full pass yielded no images (none passed the filters)")


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


@dataclass
class _Outliers:
    """What a run trains on beside the ID images, each source only with beta > 0; ``note`` says which stored
    outliers were used (the verification filter's count), for the CLI."""

    images: Dataset | None
    features: FeatureOutliers | None
    virtual: VirtualOutlierSampler | None
    note: str = ""

    @property
    def used(self) -> bool:
        return self.images is not None or self.features is not None or self.virtual is not None


def _prepare_outliers(
    config: OODTrainConfig, train: ImageData, outliers: Dataset | None, feature_outliers
) -> _Outliers:
    """Load and check every outlier source before a model is built, so that a bad input fails fast."""
    if outliers is None and config.outlier_datasets:
        if not config.store:
            raise InputError("store", "outlier_datasets are given but no result store folder")
        outliers = outlier_dataset(
            config.store,
            config.outlier_datasets,
            config.image_size,
            config.max_id_percentile,
            min_id_percentile=config.min_id_percentile,
            max_margin=config.max_margin,
            stream=config.stream_outliers,
            buffer=config.shuffle_buffer,
            seed=config.seed + 1,
        )
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
    if outliers is None and config.outlier_recipe is not None:
        outliers = cheap_recipe_outliers(
            config.outlier_recipe,
            train.dataset,
            round(config.outlier_ratio * len(train)),
            image_size=config.image_size,
            seed=config.seed + 3,
        )
    note = getattr(outliers, "verification", "")
    if not config.beta > 0:
        return _Outliers(None, None, None, note)
    if outliers is not None:
        outliers = with_outlier_mix(
            outliers,
            train.dataset,
            noise_share=config.noise_share,
            mixing_share=config.mixing_share,
            mixing_kind=config.mixing_kind,
            image_size=config.image_size,
            seed=config.seed + 3,
        )
    virtual = (
        get_virtual_sampler(config.virtual_outliers, config.virtual_params)
        if config.virtual_outliers is not None
        else None
    )
    return _Outliers(outliers, feature_outliers, virtual, note)


def _loaders(
    config: OODTrainConfig, train: ImageData, images: Dataset | None
) -> tuple[DataLoader, DataLoader | None, torch.Generator]:
    """The ID loader, the outlier images' loader (None without them) and the generator the ID batches draw from."""
    gen = torch.Generator().manual_seed(config.seed)
    id_loader = DataLoader(
        train.dataset, batch_size=config.batch_size, shuffle=True, generator=gen, num_workers=config.num_workers
    )
    if images is None:
        return id_loader, None, gen
    # a fine-tune shuffles the outliers with their own generator, so that its ID batches match a CE-only fine-tune
    # of the same checkpoint step for step; from-scratch runs keep the shared one, so their measured tables reproduce
    ood_gen = torch.Generator().manual_seed(config.seed + 1) if config.init_classifier else gen
    # a stream shuffles itself (shard order and buffer, from its own seed) and has no length: the ID set sets the epoch
    streamed = isinstance(images, IterableDataset)
    ood_loader = DataLoader(
        images,
        batch_size=config.ood_batch_size,
        shuffle=not streamed,
        generator=None if streamed else ood_gen,
        num_workers=config.num_workers,
    )
    return id_loader, ood_loader, gen


class _Steps:
    """One run's optimiser, schedule and batch sources: what every training step draws from and updates."""

    def __init__(
        self,
        config: OODTrainConfig,
        train: ImageData,
        model: TextAlignedEncoder | FeatureClassifier,
        phi: EnergyHead,
        outliers: _Outliers,
        device: torch.device,
    ):
        self.config, self.model, self.phi, self.outliers, self.device = config, model, phi, outliers, device
        self.n_classes = len(train.class_names)
        self.optimizer = torch.optim.SGD(
            list(model.parameters()) + list(phi.parameters()),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
        id_loader, ood_loader, gen = _loaders(config, train, outliers.images)
        # vectors are cheap: they never lengthen an epoch, only image outliers held in memory may
        if ood_loader is not None and not isinstance(outliers.images, IterableDataset):
            self.steps_per_epoch = max(len(id_loader), len(ood_loader))
        else:
            self.steps_per_epoch = len(id_loader)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config.epochs * self.steps_per_epoch
        )
        self.id_iter = _cycle(id_loader, "dataset")
        self.ood_iter = _cycle(ood_loader, "outliers") if ood_loader is not None else None
        self.features = outliers.features
        self.vectors = (
            _VectorBatches(self.features.unit_tensor(), config.ood_batch_size, gen)
            if self.features is not None
            else None
        )
        self.queue: FeatureQueue | None = None
        self.virtual_from = 0
        self.virtual_gen: torch.Generator | None = None
        if outliers.virtual is not None:
            self.virtual_gen = torch.Generator(device=device).manual_seed(config.seed + 2)
            self.virtual_from = (
                0 if config.init_classifier else math.ceil(outliers.virtual.params.warmup * config.epochs)
            )

    def redraw(self, epoch: int, start: int, train: ImageData) -> None:
        """Every ``redraw_every`` epochs (and on resuming), feature outliers drawn afresh in the current features."""
        c = self.config
        if (
            self.vectors is not None
            and c.redraw_every
            and epoch > 0
            and (epoch % c.redraw_every == 0 or epoch == start)
        ):
            assert self.features is not None  # the vectors are the features'
            self.features = redraw_feature_outliers(
                self.model, train, self.features, c.redraw_density, seed=c.seed + epoch
            )
            self.vectors.replace(self.features.unit_tensor())

    def step(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ID batch and its outliers (images, vectors, virtual features), one update; the loss, CE and L_ood."""
        virtual, device = self.outliers.virtual, self.device
        x_id, y = next(self.id_iter)
        x_id, y = x_id.to(device), y.to(device)
        x_ood = next(self.ood_iter)[0].to(device) if self.ood_iter is not None else x_id[:0]
        if virtual is None:
            logits = self.model(torch.cat([x_id, x_ood]))
        else:
            features = penultimate(self.model, torch.cat([x_id, x_ood]))
            logits = head_of(self.model)(features)
            if self.queue is None:
                self.queue = FeatureQueue(self.n_classes, virtual.params.queue_size, features.shape[1], device)
            self.queue.push(features[: len(y)], y)
        ce = F.cross_entropy(logits[: len(y)], y)
        if self.vectors is not None:
            assert isinstance(self.model, FeatureClassifier)  # feature outliers need init_encoder
            logits = torch.cat([logits, self.model.classify(self.vectors.next().to(device))])
        drawing = virtual is not None and epoch >= self.virtual_from and self.queue is not None and self.queue.full
        if drawing:
            assert virtual is not None and self.queue is not None and self.virtual_gen is not None  # all set above
            virtual_features, _ = virtual.sample(self.queue, self.config.ood_batch_size, self.virtual_gen)
            logits = torch.cat([logits, head_of(self.model)(virtual_features)])
        if self.ood_iter is not None or self.vectors is not None or drawing:
            l_ood = ood_loss(self.config.ood_loss, logits, len(y), self.phi)
            loss = ce + self.config.beta * l_ood
        else:
            l_ood = torch.zeros((), device=device)
            loss = ce
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss, ce, l_ood

    def epoch(self, epoch: int, bar: tqdm) -> dict[str, float]:
        """One epoch of steps; its mean loss, CE and L_ood (a history entry)."""
        self.model.train()
        self.phi.train()
        sums = {"loss": 0.0, "ce": 0.0, "ood": 0.0}
        for _ in range(self.steps_per_epoch):
            loss, ce, l_ood = self.step(epoch)
            for k, v in (("loss", loss), ("ce", ce), ("ood", l_ood)):
                sums[k] += v.item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, ce=f"{ce.item():.3f}", ood=f"{l_ood.item():.3f}")
        return {k: v / self.steps_per_epoch for k, v in sums.items()}

    def save(self, path: Path, class_names: list[str], epochs_done: int, history: list[dict]) -> None:
        """The checkpoint after each epoch: everything ``resume`` restores."""
        save_ood_checkpoint(
            path,
            self.model,
            self.phi,
            self.optimizer,
            self.scheduler,
            self.config,
            class_names,
            epochs_done,
            history,
            self.outliers.used,
        )


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
    sources = _prepare_outliers(config, train, outliers, feature_outliers)
    config, model, phi = build_model(config, train, sources.features, device)
    steps = _Steps(config, train, model, phi, sources, device)
    path = Path(out_dir) / CHECKPOINT_NAME
    start = 0
    history: list[dict] = []
    if resume and path.exists():
        parts = {"model": model, "phi": phi, "optimizer": steps.optimizer, "scheduler": steps.scheduler}
        start, history = restore_training(read_ood_checkpoint(path), **parts)
    bar = tqdm(
        total=(config.epochs - start) * steps.steps_per_epoch,
        desc="train-ood",
        unit="step",
        disable=progress is not True,
        leave=False,
    )
    for epoch in range(start, config.epochs):
        steps.redraw(epoch, start, train)
        history.append({"epoch": epoch + 1, **steps.epoch(epoch, bar)})
        steps.save(path, train.class_names, epoch + 1, history)
        if callable(progress):
            progress(epoch + 1, config.epochs)
    bar.close()
    classes = list(train.class_names)
    return OODClassifier(model.eval(), phi.eval(), classes, config, config.epochs, history, sources.used, sources.note)
