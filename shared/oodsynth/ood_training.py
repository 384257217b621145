"""OOD-regularised training: L = CE + beta * L_ood on ID images and generated outliers.

L_ood is the binary logistic loss of phi(E(f(x))), where E = -logsumexp of
the classifier's logits and phi is a small MLP; ID images are labelled 1,
outliers 0. Each step takes one ID batch and one outlier batch; an epoch is
as long as the longer of the two loaders and the shorter one is cycled (and
reshuffled), so neither set is truncated. Outliers come from the result store
(any number of its datasets) and are resized to the ID resolution.

With beta = 0 or no outlier datasets it is plain CE training: the baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoints import read_checkpoint, restore_training, write_checkpoint
from .data import ImageData
from .encoder import ENCODER_ARCHS, TextAlignedEncoder, build_encoder
from .encoder_training import default_device

CHECKPOINT_NAME = "ood.pt"


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
    beta: float = Field(2.5, ge=0, description="weight of L_ood; 0 = CE-only baseline")
    phi_hidden: int = Field(16, ge=1)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    dataset: str = ""
    image_size: int = Field(32, ge=1)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    store: str | None = None
    outlier_datasets: list[str] = Field(default_factory=list)


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


@dataclass
class OODClassifier:
    """A trained classifier f and its phi; ``uses_outliers`` is False for a CE-only baseline (phi untrained)."""

    model: TextAlignedEncoder
    phi: EnergyHead
    class_names: list[str]
    config: OODTrainConfig
    epoch: int
    history: list[dict]
    uses_outliers: bool


def outlier_dataset(store: str | Path, datasets: list[str], image_size: int) -> Dataset:
    """The store's outliers as tensors at the ID resolution."""
    from torchvision import transforms

    from .outlier_dataset import StoredOutliers

    transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    ds = StoredOutliers(store, datasets, transform=transform)
    if len(ds) == 0:
        raise ValueError(f"outlier_datasets: {datasets} in {store} hold no images")
    return ds


def _cycle(loader: DataLoader) -> Iterator:
    """Endless passes over a loader (a fresh shuffle each pass)."""
    while True:
        yield from loader


def _save(path: Path, model, phi, optimizer, scheduler, config: OODTrainConfig, class_names, epoch, history,
          uses_outliers: bool) -> None:
    write_checkpoint(path, {"kind": "ood_classifier", "config": config.model_dump(mode="json"), "model": model.state_dict(),
                "phi": phi.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "class_names": list(class_names), "epoch": epoch, "history": history,
                "uses_outliers": uses_outliers})


def _read(path: str | Path) -> dict:
    return read_checkpoint(path, kind="ood_classifier", default_name=CHECKPOINT_NAME,
                           what="an OOD classifier checkpoint (from train-ood)")


def _build(config: OODTrainConfig, n_classes: int) -> tuple[TextAlignedEncoder, EnergyHead]:
    torch.manual_seed(config.seed)
    model = build_encoder(config.arch, n_classes, width=config.width, mean=config.mean, std=config.std)
    return model, EnergyHead(config.phi_hidden)


def load_ood_classifier(path: str | Path, device: str | torch.device | None = None) -> OODClassifier:
    state = _read(path)
    config = OODTrainConfig.model_validate(state["config"])
    model, phi = _build(config, len(state["class_names"]))
    model.load_state_dict(state["model"])
    phi.load_state_dict(state["phi"])
    device = device or default_device()
    return OODClassifier(model.to(device).eval(), phi.to(device).eval(), list(state["class_names"]), config,
                         int(state["epoch"]), list(state["history"]), bool(state["uses_outliers"]))


def train_ood(
    config: OODTrainConfig,
    train: ImageData,
    out_dir: str | Path,
    *,
    outliers: Dataset | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = True,
) -> OODClassifier:
    """Train f (and phi) on ``train`` plus ``outliers`` (default: the config's store datasets)."""
    device = torch.device(device) if device else default_device()
    if outliers is None and config.outlier_datasets:
        if not config.store:
            raise ValueError("store: outlier_datasets are given but no result store folder")
        outliers = outlier_dataset(config.store, config.outlier_datasets, config.image_size)
    use_ood = outliers is not None and config.beta > 0
    path = Path(out_dir) / CHECKPOINT_NAME
    model, phi = _build(config, len(train.class_names))
    model.to(device)
    phi.to(device)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(phi.parameters()), lr=config.lr,
                                momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
                                weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    id_loader = DataLoader(train.dataset, batch_size=config.batch_size, shuffle=True, generator=gen,
                           num_workers=config.num_workers)
    ood_loader = (DataLoader(outliers, batch_size=config.ood_batch_size, shuffle=True, generator=gen,
                             num_workers=config.num_workers) if use_ood else None)
    steps_per_epoch = max(len(id_loader), len(ood_loader)) if use_ood else len(id_loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    start, history = 0, []
    if resume and path.exists():
        state = _read(path)
        start, history = restore_training(state, model=model, phi=phi, optimizer=optimizer, scheduler=scheduler)
    id_iter = _cycle(id_loader)
    ood_iter = _cycle(ood_loader) if use_ood else None
    bar = tqdm(total=(config.epochs - start) * steps_per_epoch, desc="train-ood", unit="step",
               disable=progress is not True, leave=False)
    for epoch in range(start, config.epochs):
        model.train()
        phi.train()
        sums = {"loss": 0.0, "ce": 0.0, "ood": 0.0}
        for _ in range(steps_per_epoch):
            x_id, y = next(id_iter)
            x_id, y = x_id.to(device), y.to(device)
            if use_ood:
                x_ood = next(ood_iter)[0].to(device)
                logits = model(torch.cat([x_id, x_ood]))
                ce = F.cross_entropy(logits[: len(y)], y)
                target = torch.cat([torch.ones(len(y)), torch.zeros(len(x_ood))]).to(device)
                l_ood = F.binary_cross_entropy_with_logits(phi(energy(logits)), target)
                loss = ce + config.beta * l_ood
            else:
                ce = F.cross_entropy(model(x_id), y)
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
        _save(path, model, phi, optimizer, scheduler, config, train.class_names, epoch + 1, history, use_ood)
        if callable(progress):
            progress(epoch + 1, config.epochs)
    bar.close()
    return OODClassifier(model.eval(), phi.eval(), list(train.class_names), config, config.epochs, history, use_ood)
