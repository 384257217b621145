"""Train the text-aligned encoder: CE over similarities between h(x) and every anchor T(y_j).

Cosine kernel (the method): logits_j = cos(T(y_j), z) / t with z = h(x)/||h(x)||,
t = 0.1. Euclidean kernel (option): logits_j = -||h(x) - T(y_j)||^2 / (2 t).
SGD 0.1, momentum 0.9, nesterov, wd 5e-4, cosine schedule by default.

A checkpoint holds the config, anchors, class names and all training state,
so ``features``, ``POST /features`` and ``--resume`` need nothing else. It is
saved with plain tensors and builtins and loaded with ``weights_only=True``
(no pickle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..checkpoints import read_checkpoint, restore_training, write_checkpoint
from ..data import ImageData
from ..device import default_device
from .encoder import TextAlignedEncoder, build_encoder
from .recipe import BatchSize, Epochs, TrainingRun

CHECKPOINT_NAME = "encoder.pt"


class EncoderTrainConfig(TrainingRun):
    """Everything needed to rebuild and continue a training run: the run's recipe (``encoding.recipe``) and the
    encoder's own loss and optimiser settings."""

    epochs: Epochs = 200
    batch_size: BatchSize = 256
    pretrained: bool = False
    kernel: Literal["cosine", "euclidean"] = "cosine"
    temperature: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    num_workers: int = Field(0, ge=0)
    dataset: str = ""


class AnchorLoss(nn.Module):
    """CE over kernel similarities between features and all class anchors."""

    anchors: torch.Tensor  # a buffer (C, D)

    def __init__(self, anchors: torch.Tensor, kernel: str = "cosine", temperature: float = 0.1):
        super().__init__()
        if kernel not in ("cosine", "euclidean"):
            raise ValueError(f"kernel: expected 'cosine' or 'euclidean', got {kernel!r}")
        self.register_buffer("anchors", anchors.float())
        self.kernel = kernel
        self.temperature = temperature

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.kernel == "cosine":
            return F.normalize(h, dim=1) @ F.normalize(self.anchors, dim=1).T / self.temperature
        return -torch.cdist(h, self.anchors).pow(2) / (2 * self.temperature)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(h), labels)


@dataclass
class EncoderCheckpoint:
    """A loaded checkpoint: the model (eval mode), its anchors and class names, and where it stopped."""

    model: TextAlignedEncoder
    anchors: np.ndarray  # (C, D) float32, raw T(y)
    class_names: list[str]
    config: EncoderTrainConfig
    epoch: int
    history: list[dict]


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    config: EncoderTrainConfig,
    anchors: torch.Tensor,
    class_names: list[str],
    epoch: int,
    history: list[dict],
) -> None:
    """Write atomically (tmp + rename) so an interrupted run never leaves a corrupt checkpoint."""
    write_checkpoint(
        path,
        {
            "kind": "text_aligned_encoder",
            "config": config.model_dump(mode="json"),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer else None,
            "scheduler": scheduler.state_dict() if scheduler else None,
            "anchors": anchors.detach().cpu().float(),
            "class_names": list(class_names),
            "epoch": epoch,
            "history": history,
        },
    )


def _read(path: str | Path) -> dict:
    return read_checkpoint(
        path, kind="text_aligned_encoder", default_name=CHECKPOINT_NAME, what="a text-aligned encoder checkpoint"
    )


def load_encoder(path: str | Path, device: str | torch.device | None = None) -> EncoderCheckpoint:
    """Load a checkpoint file (or a run folder holding ``encoder.pt``) for inference."""
    state = _read(path)
    config = EncoderTrainConfig.model_validate(state["config"])
    anchors = state["anchors"]
    model = build_encoder(config.arch, anchors.shape[1], width=config.width, mean=config.mean, std=config.std)
    model.load_state_dict(state["model"])
    model.to(device or default_device()).eval()
    return EncoderCheckpoint(
        model,
        anchors.numpy().astype(np.float32),
        list(state["class_names"]),
        config,
        int(state["epoch"]),
        list(state["history"]),
    )


@torch.no_grad()
def nearest_anchor_accuracy(
    model: TextAlignedEncoder, data: ImageData, anchors: torch.Tensor, batch_size: int = 256
) -> float:
    """Fraction of images whose nearest anchor (by cosine) is their own class."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    a = F.normalize(anchors.to(device).float(), dim=1)
    correct = total = 0
    for x, y in DataLoader(data.dataset, batch_size=batch_size):
        pred = (model.embed(x.to(device)) @ a.T).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def _train_epoch(model, criterion, optimizer, scheduler, loader: DataLoader, device, bar: tqdm, epoch: int) -> float:
    """One pass over the loader, one update per batch; the mean loss per image."""
    model.train()
    loss_sum = n = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(y)
        n += len(y)
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    return loss_sum / max(n, 1)


def train_encoder(
    config: EncoderTrainConfig,
    train: ImageData,
    anchors: np.ndarray,
    out_dir: str | Path,
    *,
    eval_data: ImageData | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = True,
) -> EncoderCheckpoint:
    """Train (or resume) and checkpoint after every epoch to ``out_dir/encoder.pt``.

    ``progress=True`` shows a tqdm bar over batches; a callable gets
    ``(epochs_done, epochs_total)`` after each epoch.
    """
    anchors_t = torch.as_tensor(np.asarray(anchors, dtype=np.float32))
    if anchors_t.ndim != 2 or anchors_t.shape[0] != len(train.class_names):
        raise ValueError(
            f"anchors: expected ({len(train.class_names)}, D) for the dataset's classes, got {tuple(anchors_t.shape)}"
        )
    device = torch.device(device) if device else default_device()
    path = Path(out_dir) / CHECKPOINT_NAME
    torch.manual_seed(config.seed)
    model = build_encoder(
        config.arch,
        anchors_t.shape[1],
        width=config.width,
        pretrained=config.pretrained,
        mean=config.mean,
        std=config.std,
    ).to(device)
    criterion = AnchorLoss(anchors_t, config.kernel, config.temperature).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    loader = DataLoader(
        train.dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=False,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * len(loader))
    start = 0
    history: list[dict] = []
    if resume and path.exists():
        state = _read(path)
        if not torch.equal(state["anchors"], anchors_t):
            raise ValueError(f"resume: the anchors differ from those of the checkpoint at {path}")
        start, history = restore_training(state, model=model, optimizer=optimizer, scheduler=scheduler)
    total_steps = (config.epochs - start) * len(loader)
    bar = tqdm(total=total_steps, desc="train-encoder", unit="batch", disable=progress is not True, leave=False)
    for epoch in range(start, config.epochs):
        loss = _train_epoch(model, criterion, optimizer, scheduler, loader, device, bar, epoch)
        record = {"epoch": epoch + 1, "loss": loss}
        if eval_data is not None:
            record["eval_accuracy"] = nearest_anchor_accuracy(model, eval_data, anchors_t)
        history.append(record)
        save_checkpoint(path, model, optimizer, scheduler, config, anchors_t, train.class_names, epoch + 1, history)
        if callable(progress):
            progress(epoch + 1, config.epochs)
    bar.close()
    model.eval()
    return EncoderCheckpoint(model, anchors_t.numpy(), list(train.class_names), config, config.epochs, history)
