"""The peer methods every row faces, under the same budget as the default recipe: VOS, NPOS, mixing, post-hoc.

Trained peers use the detector of every image row (arch, width, epochs, ID
batches, seed: paired with ``ce`` by seed) and the same number of outliers per
step (``ood_batch_size`` grown to the outlier count as for image rows) and the
same L_ood and beta:

- ``vos`` / ``npos``: virtual outliers drawn in training on the penultimate
  features (``training.virtual_outliers``, the references' parameters; the
  per-class queue holds at most one epoch's images of a class);
- ``mixup`` / ``cutmix``: a pool of as many outlier images as the decoded rows
  get (``outlier_ratio``), each a mix of two ID training images of different
  classes (``training.mixing``, share 0.3-0.7).

Post-hoc peers (``posthoc:<detector>``) score the seed's CE-only detector (the
``ce`` row's model, trained once and cached: ``pretrained_detector``) with a
pytorch-ood detector fitted on the ID training set (``training.detectors``),
at the parameters in ``POSTHOC_PARAMS`` (fixed: the detectors' defaults,
written out so the report can name them).

A row's cache key names the settings it uses, not these parameters: a change
to them is a new row name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data import image_tensors
from ..training.evaluation import evaluate
from .rows import Cell, CellOutcome, Row, _ood_config, _train_and_evaluate, pretrained_detector
from .settings import FINETUNE_FIELDS, OUTLIER_FIELDS

VIRTUAL_QUEUE = 1000  # features kept per class (both references), capped at the class's images in one epoch
MIXING_SHARE = (0.3, 0.7)
# the post-hoc detectors and their fixed parameters (pytorch-ood keywords; D = the penultimate width)
POSTHOC_PARAMS: dict[str, dict] = {
    "msp": {},
    "maxlogit": {},
    "energy": {},
    "mahalanobis": {},
    "rmd": {},
    "knn": {"k": 50},
    "vim": {},  # d = D / 2 (training.detectors)
    "react": {"percentile": 0.9},
}


def _n_outliers(cell: Cell) -> int:
    """As many outliers as the image rows get: ``outlier_ratio`` of the ID training set."""
    return cell.settings.per_class(len(cell.train), len(cell.train.class_names)) * len(cell.train.class_names)


def virtual_row(method: str) -> Callable[[Cell], CellOutcome]:
    def run(cell: Cell) -> CellOutcome:
        from ..training.ood import train_ood

        _, labels = image_tensors(cell.train)
        queue = min(VIRTUAL_QUEUE, int(torch.bincount(labels).min()))
        params = {"queue_size": queue}
        config = _ood_config(
            cell, cell.settings.beta, _n_outliers(cell), virtual_outliers=method, virtual_params=params
        )
        clf = train_ood(config, cell.train, cell.work, device="cpu", progress=False)
        info = {"virtual_per_step": config.ood_batch_size, "queue_size": queue}
        return CellOutcome(evaluate(clf, cell.test, cell.ood_sets, progress=False), "energy", info)

    run.__doc__ = f"{method.upper()}: virtual outliers drawn in training on the penultimate features."
    return run


def mixing_row(kind: str) -> Callable[[Cell], CellOutcome]:
    def run(cell: Cell) -> CellOutcome:
        from ..training.mixing import mixing_outliers

        x, y = image_tensors(cell.train)
        mixed = mixing_outliers(kind, x, y, _n_outliers(cell), seed=cell.seed, share=MIXING_SHARE)
        return _train_and_evaluate(cell, mixed.images, {"mixing_share": list(MIXING_SHARE)})

    run.__doc__ = f"{kind} of two ID images of different classes as outlier images."
    return run


def posthoc_row(name: str) -> Callable[[Cell], CellOutcome]:
    def run(cell: Cell) -> CellOutcome:
        from ..training.detectors import evaluate_detectors
        from ..training.ood import load_ood_classifier

        clf = load_ood_classifier(pretrained_detector(cell), device="cpu")
        params = {name: POSTHOC_PARAMS[name]}
        report = evaluate_detectors(clf, cell.train, cell.test, cell.ood_sets, names=[name], params=params)
        return CellOutcome(report, name, {"detector_params": POSTHOC_PARAMS[name]})

    run.__doc__ = f"{name} on the CE-only detector (post-hoc, fitted on the ID training set)."
    return run


def peer_rows() -> list[Row]:
    """The peers: trained (vos, npos, mixup, cutmix), then one post-hoc row per detector; all paired with ``ce``."""
    trained = OUTLIER_FIELDS | FINETUNE_FIELDS
    rows = [Row(m, virtual_row(m), uses=trained, uses_assets=False, kind="peer") for m in ("vos", "npos")]
    rows += [Row(k, mixing_row(k), uses=trained, uses_assets=False, kind="peer") for k in ("mixup", "cutmix")]
    # the from-scratch CE model: its key is the detector's alone, whatever the fine-tune settings
    rows += [
        Row(f"posthoc:{n}", posthoc_row(n), uses=frozenset(), uses_assets=False, kind="posthoc") for n in POSTHOC_PARAMS
    ]
    return rows
