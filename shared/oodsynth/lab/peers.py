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
  classes (``training.mixing``, share 0.3-0.7);
- ``noise+cutmix``: half smooth noise, half cutmix: the decoded recipe's outlier
  mix without its decoded images (does the decoder add anything?).

Trained peers are ranked by the same test-time score as the image rows (``LabSettings.test_score``).

Post-hoc peers (``posthoc:<detector>``) score the seed's CE-only detector trained
from scratch (``pretrained_detector``, cached: the ``ce`` row's very model when
``finetune_epochs`` is 0 and both ran at one torch thread count) with a
pytorch-ood detector fitted on the ID training set (``training.detectors``),
at the parameters in ``POSTHOC_PARAMS``, chosen on the protocol's dev splits by
``bench/posthoc_params.py`` (lowest mean of near and far FPR95 over both
profiles' dev splits x dev seeds; bench/results/peers/posthoc_params_dev.md).
A row with parameters names them (``posthoc:knn@k1``): the cell cache is keyed by
the row name and the settings, so another parameter is another row, never a
stale cell. The fused scores of ``LAB_SCORES`` (``posthoc:energy+mahalanobis``)
are post-hoc rows too: a row trained with outliers and scored by a fused score
faces that very score on the CE-only model.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from ..data import image_tensors
from ..training.detectors import is_fused
from ..training.mixing import DEFAULT_SHARE
from .cells import (
    Cell,
    CellOutcome,
    Row,
    cheap_outliers,
    evaluate_trained,
    ood_config,
    pretrained_detector,
    train_and_evaluate,
)
from .settings import FINETUNE_FIELDS, LAB_SCORES, OUTLIER_FIELDS, POSTHOC_PARAMS, detector_params

VIRTUAL_QUEUE = 1000  # features kept per class (both references), capped at the class's images in one epoch
# every single detector, then the fused test-time scores (training.detectors.FusedDetector) on the CE-only
# model: what a trained row scored by a fused ``test_score`` faces without any outliers
POSTHOC_DETECTORS = (*POSTHOC_PARAMS, *(s for s in LAB_SCORES if is_fused(s)))


def _flat_params(detector: str) -> dict:
    """The detector's ``POSTHOC_PARAMS``, a fused one's parts' together (``energy+knn``: ``{"k": 1}``)."""
    return {k: v for part in detector_params([detector]).values() for k, v in part.items()}


def posthoc_name(detector: str) -> str:
    """``posthoc:<detector>``, with its parameters when it has any (``posthoc:react@percentile0.8``,
    ``posthoc:energy+knn@k1``)."""
    params = _flat_params(detector)
    return f"posthoc:{detector}" + ("@" + "_".join(f"{k}{v}" for k, v in params.items()) if params else "")


def _n_outliers(cell: Cell) -> int:
    """As many outliers as the image rows get: ``outlier_ratio`` of the ID training set."""
    return cell.settings.per_class(len(cell.train), len(cell.train.class_names)) * len(cell.train.class_names)


def virtual_row(method: str) -> Callable[[Cell], CellOutcome]:
    def run(cell: Cell) -> CellOutcome:
        from ..training.ood import train_ood

        _, labels = image_tensors(cell.train)
        queue = min(VIRTUAL_QUEUE, int(torch.bincount(labels).min()))
        params = {"queue_size": queue}
        config = ood_config(cell, cell.settings.beta, _n_outliers(cell), virtual_outliers=method, virtual_params=params)
        clf = train_ood(config, cell.train, cell.work, device="cpu", progress=False)
        info = {"virtual_per_step": config.ood_batch_size, "queue_size": queue}
        return evaluate_trained(cell, clf, info)

    run.__doc__ = f"{method.upper()}: virtual outliers drawn in training on the penultimate features."
    return run


def mixing_row(kind: str) -> Callable[[Cell], CellOutcome]:
    def run(cell: Cell) -> CellOutcome:
        from ..training.mixing import mixing_outliers

        x, y = image_tensors(cell.train)
        mixed = mixing_outliers(kind, x, y, _n_outliers(cell), seed=cell.seed, share=DEFAULT_SHARE)
        return train_and_evaluate(cell, mixed.images, {"mixing_share": list(DEFAULT_SHARE)})

    run.__doc__ = f"{kind} of two ID images of different classes as outlier images."
    return run


def row_noise_and_cutmix(cell: Cell) -> CellOutcome:
    """Half smooth noise, half cutmix: the decoded recipe's outlier mix without its decoded images."""
    n = _n_outliers(cell)
    info: dict = {}
    images = torch.cat(cheap_outliers(cell, n // 2, n - n // 2, "cutmix", info))
    return train_and_evaluate(cell, images, info)


def posthoc_row(name: str) -> Callable[[Cell], CellOutcome]:
    def run(cell: Cell) -> CellOutcome:
        from ..training.classifier import load_ood_classifier
        from ..training.detectors import evaluate_detectors

        clf = load_ood_classifier(pretrained_detector(cell), device="cpu")
        params = detector_params([name])
        report = evaluate_detectors(clf, cell.train, cell.test, cell.ood_sets, names=[name], params=params)
        return CellOutcome(report, name, {"detector_params": params if is_fused(name) else params[name]})

    params = ", ".join(f"{k} {v}" for k, v in _flat_params(name).items())
    run.__doc__ = f"{name}{f' ({params})' if params else ''} on the CE-only detector (post-hoc, fitted on ID train)."
    return run


def peer_rows() -> list[Row]:
    """The peers: trained (vos, npos, mixup, cutmix, noise+cutmix), then one post-hoc row per detector; all paired
    with ``ce``."""
    trained = OUTLIER_FIELDS | FINETUNE_FIELDS
    peer = partial(Row, uses=trained, uses_assets=False, kind="peer", test_scored=True)
    rows = [peer(m, virtual_row(m)) for m in ("vos", "npos")]
    rows += [peer(k, mixing_row(k)) for k in ("mixup", "cutmix")]
    # the ablation of the decoded recipe: its cheap parts alone, at the full outlier count
    rows.append(peer("noise+cutmix", row_noise_and_cutmix, noise_outliers=True))
    # the from-scratch CE model: its key is the detector's alone, whatever the fine-tune settings
    rows += [
        Row(posthoc_name(n), posthoc_row(n), uses=frozenset(), uses_assets=False, kind="posthoc")
        for n in POSTHOC_DETECTORS
    ]
    return rows
