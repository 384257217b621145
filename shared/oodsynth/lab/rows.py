"""The lab's rows: one way of building a detector each, run on one ``Cell`` (profile, seed, settings, data)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..data import ImageData, ProfileSplit, image_tensors
from ..decoding.verification import images_to_tensor
from ..densities import ClassDensities
from ..encoding.features import build_bank
from ..encoding.training import EncoderTrainConfig, train_encoder
from ..samplers import DEFAULT_METHOD
from ..training.evaluation import EvaluationReport, evaluate, evaluate_density, merge_reports
from ..training.outlier_mix import smooth_noise
from .assets import LabAssets, _atomic_write
from .pools import decoded_inlier_pool, decoded_pool
from .settings import (
    DECODED_FIELDS,
    FINETUNE_FIELDS,
    FROM_SCRATCH,
    INLIER_FIELDS,
    LAB_SCORES,
    OUTLIER_FIELDS,
    LabSettings,
    detector_params,
)

DEFAULT_ROW = f"decoded:{DEFAULT_METHOD}+verified"  # the shipped recipe: default sampler, decoded, verified


@dataclass
class Cell:
    """Everything a row needs to run one seed."""

    profile: str
    seed: int
    settings: LabSettings
    train: ImageData
    test: ImageData
    ood_sets: dict[str, ImageData]
    cache: Path
    work: Path
    assets: Callable[[], LabAssets]  # lazy: ce/noise rows never build the generation side
    split: ProfileSplit | None = None  # None: the profile's default split

    def __post_init__(self) -> None:
        if self.split is None:
            self.split = ProfileSplit.default(self.profile)


@dataclass
class CellOutcome:
    report: EvaluationReport
    score: str  # the score the row is ranked by
    info: dict = field(default_factory=dict)


def _ood_config(cell: Cell, beta: float, n_outliers: int = 0, *, finetune: bool = True, **extra):
    """The detector's config. The outlier batch grows when needed so that an epoch is one pass over the ID
    images whatever the outlier count: a row and its CE pair then take exactly the same ID steps. With
    ``finetune_epochs`` (and ``finetune``) it fine-tunes the seed's pretrained CE-only detector."""
    from ..training.ood_config import OODTrainConfig

    s = cell.settings
    id_steps = math.ceil(len(cell.train) / s.batch_size)
    ood_batch_size = max(s.ood_batch_size, math.ceil(n_outliers / id_steps))
    epochs, lr = s.epochs_for(len(cell.train)), s.lr
    if finetune and s.finetune_epochs:
        epochs, lr = s.finetune_epochs, s.finetune_lr
        extra["init_classifier"] = str(pretrained_detector(cell))
    return OODTrainConfig(
        arch=s.arch,
        width=s.width,
        epochs=epochs,
        batch_size=s.batch_size,
        ood_batch_size=ood_batch_size,
        lr=lr,
        beta=beta,
        ood_loss=s.ood_loss,
        seed=cell.seed,
        dataset=cell.profile,
        image_size=s.image_size,
        mean=cell.train.mean,
        std=cell.train.std,
        **extra,
    )


def pretrained_detector(cell: Cell) -> Path:
    """The seed's CE-only detector trained from scratch (the ``ce`` row's model without fine-tuning): the
    checkpoint every fine-tuning row starts from, trained once and cached."""
    from ..training.classifier import CHECKPOINT_NAME
    from ..training.ood import train_ood

    scratch = cell.settings.model_copy(update=FROM_SCRATCH)
    path = cell.cache / f"pretrained-{cell.split.key}-s{cell.seed}-{scratch.key(frozenset())}.pt"
    if not path.is_file():
        work = cell.work / "pretrained"
        train_ood(
            _ood_config(replace(cell, settings=scratch), 0.0, finetune=False),
            cell.train,
            work,
            device="cpu",
            progress=False,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, (work / CHECKPOINT_NAME).read_bytes())
    return path


def _as_float_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    return images_to_tensor(images.float() / 255 if images.dtype == torch.uint8 else images, image_size)


def decoded_inliers(cell: Cell) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The seed's decoded ID images (float, labels, info): per class the first ``decoded_inliers`` share of the
    ID training set that the encoder re-encodes to its own class (a reconstruction drawn as another class would
    be a mislabelled ID image)."""
    s = cell.settings
    pool = decoded_inlier_pool(cell.assets(), cell.seed, s, cell.cache)
    n_per_class = s.per_class(len(cell.train), len(cell.train.class_names), s.decoded_inliers)
    faithful = pool.verification.id_class == pool.class_index
    keep = np.sort(
        np.concatenate(
            [np.flatnonzero((pool.class_index == c) & faithful)[:n_per_class] for c in np.unique(pool.class_index)]
        )
    )
    info = {
        "inlier_pool": len(pool.class_index),
        "inliers": len(keep),
        "inlier_faithful_rate": float(faithful.mean()),
        "inlier_median_id_percentile": float(np.median(pool.verification.id_percentile)),
    }
    x = _as_float_images(pool.images[torch.from_numpy(keep)], s.image_size)
    return x, torch.from_numpy(pool.class_index[keep]).long(), info


def _train_and_evaluate(
    cell: Cell, outliers: torch.Tensor | None, info: dict | None = None, *, inliers: bool = False
) -> CellOutcome:
    """Train the detector (CE, plus beta * L_ood when ``outliers`` are given) and evaluate it; with ``inliers``
    the seed's decoded ID images join the ID training set (the same epochs, so a few more steps)."""
    from ..training.ood import train_ood

    beta = cell.settings.beta if outliers is not None else 0.0
    train, info = cell.train, dict(info or {})
    if inliers:
        x_in, y_in, inlier_info = decoded_inliers(cell)
        x, y = image_tensors(cell.train)
        train = replace(cell.train, dataset=TensorDataset(torch.cat([x, x_in]), torch.cat([y, y_in])))
        info.update(inlier_info)
    ds = None
    if outliers is not None:
        x = _as_float_images(outliers, cell.settings.image_size)
        ds = TensorDataset(x, torch.zeros(len(x), dtype=torch.int64))
    config = _ood_config(cell, beta, 0 if ds is None else len(ds))
    clf = train_ood(config, train, cell.work, outliers=ds, device="cpu", progress=False)
    return evaluate_trained(cell, clf, {"n_outliers": 0 if ds is None else len(ds), **info})


def evaluate_trained(cell: Cell, clf, info: dict | None = None, *, train=None, test=None, ood_sets=None) -> CellOutcome:
    """A row's detector trained end to end, scored by energy (and phi) and by every one of ``LAB_SCORES`` (fitted
    on the ID train set), ranked by the settings' ``test_score``: every score a dev-split choice can pick is in the
    cell, so choosing one reruns nothing."""
    from ..training.detectors import evaluate_detectors

    train = cell.train if train is None else train
    test = cell.test if test is None else test
    ood_sets = cell.ood_sets if ood_sets is None else ood_sets
    report = merge_reports(
        evaluate(clf, test, ood_sets, progress=False),
        evaluate_detectors(clf, train, test, ood_sets, names=list(LAB_SCORES), params=detector_params(LAB_SCORES)),
    )
    return CellOutcome(report, cell.settings.test_score, dict(info or {}))


def row_ce(cell: Cell) -> CellOutcome:
    """CE only, scored by energy: the baseline every row is paired with (other scores of it: the post-hoc rows)."""
    if cell.settings.finetune_epochs:
        return replace(_train_and_evaluate(cell, None), score="energy")
    # from scratch, the CE model is the seed's pretrained detector: trained once, shared with the post-hoc rows
    from ..training.classifier import load_ood_classifier

    clf = load_ood_classifier(pretrained_detector(cell), device="cpu")
    return CellOutcome(evaluate(clf, cell.test, cell.ood_sets, progress=False), "energy", {"n_outliers": 0})


def row_density(cell: Cell) -> CellOutcome:
    """No outliers: max class log-density of a text-aligned encoder trained with this seed at the same budget.

    The fit is to that encoder's own training features (Gaussian by default: a Mahalanobis-like score).
    """
    s = cell.settings
    anchors = cell.assets().anchors
    config = EncoderTrainConfig(
        arch=s.arch,
        width=s.width,
        epochs=s.epochs_for(len(cell.train)),
        batch_size=s.batch_size,
        lr=s.lr,
        seed=cell.seed,
        image_size=s.image_size,
        mean=cell.train.mean,
        std=cell.train.std,
        dataset=cell.profile,
    )
    encoder = train_encoder(config, cell.train, anchors, cell.work, device="cpu", progress=False)
    # the score uses raw log-densities only, so the ID-percentile calibration (cross-fitting) is skipped
    fit = ClassDensities(kind=s.density, calibration_folds=0).fit(build_bank(encoder, cell.train, progress=False))
    return CellOutcome(evaluate_density(encoder.model, fit, cell.test, cell.ood_sets, progress=False), "density")


def row_noise(cell: Cell) -> CellOutcome:
    """The control: as many outliers as the decoded rows, but smooth random noise."""
    n = cell.settings.per_class(len(cell.train), len(cell.train.class_names)) * len(cell.train.class_names)
    return _train_and_evaluate(cell, smooth_noise(n, cell.settings.image_size, cell.seed))


def row_inliers(cell: Cell) -> CellOutcome:
    """CE only, with the decoded ID images of the decoded rows (``decoded_inliers``) added: their control."""
    if cell.settings.decoded_inliers <= 0:
        raise ValueError("decoded_inliers: the inliers row needs decoded_inliers > 0 (--set decoded_inliers=0.1)")
    return _train_and_evaluate(cell, None, inliers=True)


def decoded_row(sampler: str, verified: bool) -> Callable[[Cell], CellOutcome]:
    def run(cell: Cell) -> CellOutcome:
        s = cell.settings
        pool = decoded_pool(cell.assets(), sampler, cell.seed, s, cell.cache)
        n_classes = len(cell.train.class_names)
        per_class = s.per_class(len(cell.train), n_classes)
        # the outlier mix: this many of each class's outliers are smooth noise, this many image-space mixes
        n_noise_per_class = round(s.noise_share * per_class)
        n_mixed_per_class = round(s.mixing_share * per_class)
        keep = pool.choose(per_class - n_noise_per_class - n_mixed_per_class, s.max_id_percentile if verified else None)
        info = {
            "pool": len(pool.class_index),
            "sample_s": pool.sample_seconds,
            "decode_s": pool.decode_seconds,
            "pool_pass_rate": float(pool.verification.passes(s.max_id_percentile).mean()),
            "pool_median_id_percentile": float(np.median(pool.verification.id_percentile)),
            "kept_median_id_percentile": float(np.median(pool.verification.id_percentile[keep]))
            if len(keep)
            else float("nan"),
        }
        if len(keep) == 0:
            raise ValueError(f"max_id_percentile: no decoded {sampler} outlier passes {s.max_id_percentile}")
        images = pool.images[torch.from_numpy(keep)]
        if s.outlier_postprocess == "binarize":
            from torchvision.transforms.functional import gaussian_blur

            images = gaussian_blur((images > 127).float(), [3, 3], [0.6, 0.6])
        if n_noise_per_class or n_mixed_per_class:
            images = torch.cat(
                [
                    _as_float_images(images, s.image_size),
                    *cheap_outliers(
                        cell, n_noise_per_class * n_classes, n_mixed_per_class * n_classes, s.mixing_kind, info
                    ),
                ]
            )
        return _train_and_evaluate(cell, images, info, inliers=s.decoded_inliers > 0)

    run.__doc__ = f"{sampler} vectors decoded by the trained decoder{', verified' if verified else ''}."
    return run


def cheap_outliers(cell: Cell, n_noise: int, n_mixed: int, kind: str, info: dict) -> list[torch.Tensor]:
    """Outliers that need no generator, float at the lab's image size: ``n_noise`` smooth-noise images, then
    ``n_mixed`` ``kind`` mixes of two ID training images of different classes (the mixing peer's maker and
    shares); their counts go into ``info``. The decoded rows' outlier mix and the ``noise+cutmix`` peer."""
    from ..training.mixing import mixing_outliers

    s, parts = cell.settings, []
    if n_noise:
        info["n_noise"] = n_noise
        parts.append(smooth_noise(n_noise, s.image_size, cell.seed))
    if n_mixed:
        info["n_mixed"] = n_mixed
        x, y = image_tensors(cell.train)
        parts.append(_as_float_images(mixing_outliers(kind, x, y, n_mixed, seed=cell.seed).images, s.image_size))
    return parts


def feature_outliers_available() -> bool:
    from ..training.ood import train_ood

    return "feature_outliers" in inspect.signature(train_ood).parameters


def _train_from_encoder(cell: Cell, feature_outliers=None, info: dict | None = None) -> CellOutcome:
    """Train end to end starting from the assets' text-aligned encoder (its arch, width and image size; anchor
    head), with feature-space outliers when given; evaluated at the encoder's image size. These rows always
    start from the encoder: ``finetune_epochs`` does not apply to them (nor to their cache key)."""
    from ..training.ood import train_ood

    s, assets = cell.settings, cell.assets()
    size = assets.encoder.config.image_size
    train, test, ood_sets = LabData.get(cell.split, size)
    at_size = replace(
        cell, settings=s.model_copy(update={"image_size": size}), train=train, test=test, ood_sets=ood_sets
    )
    n = 0 if feature_outliers is None else len(feature_outliers.vectors)
    beta = s.beta if feature_outliers is not None else 0.0
    config = _ood_config(at_size, beta, n, finetune=False, init_encoder=str(assets.encoder_path))
    clf = train_ood(config, train, cell.work, feature_outliers=feature_outliers, device="cpu", progress=False)
    return evaluate_trained(cell, clf, {"n_outliers": n, **(info or {})}, train=train, test=test, ood_sets=ood_sets)


def row_ce_init(cell: Cell) -> CellOutcome:
    """CE only, starting from the text-aligned encoder (the pair of the feature-space rows)."""
    return _train_from_encoder(cell)


def feature_row(sampler: str) -> Callable[[Cell], CellOutcome]:
    def run(cell: Cell) -> CellOutcome:
        s, assets = cell.settings, cell.assets()
        n = s.per_class(len(cell.train), len(cell.train.class_names))
        return _train_from_encoder(cell, s.sampler(sampler).sample(assets.fit, n, seed=cell.seed, bank=assets.bank))

    run.__doc__ = f"{sampler} vectors fed straight to the head (no decoding), end to end from the encoder."
    return run


@dataclass(frozen=True)
class Row:
    name: str
    run: Callable[[Cell], CellOutcome]
    baseline: str | None = "ce"  # the row it is paired with by seed
    needs_decoder: bool = False
    uses: frozenset[str] = frozenset()  # settings beyond the detector's that its result depends on (cache key)
    uses_assets: bool = True  # built from the generation side: its cache key names the assets
    sampler: str | None = None  # the sampler whose parameters its key names (when it uses "sampler_params")
    kind: str = "ours"  # baseline (CE), peer (another method, the report's "best peer"), posthoc, ours
    noise_outliers: bool = False  # trained on noise: not credited on the far-OOD noise set
    test_scored: bool = False  # ranked by the settings' test_score (trained end to end), not a fixed score

    def trains_on_noise(self, settings: LabSettings) -> bool:
        """Any smooth noise among its outliers (the noise rows, or an outlier mix with ``noise_share``): such a row
        earns no far-OOD credit on the noise set."""
        return self.noise_outliers or ("noise_share" in self.uses and settings.noise_share > 0)

    @property
    def description(self) -> str:
        return (self.run.__doc__ or "").strip().split("\n")[0]


def lab_rows() -> dict[str, Row]:
    """Every row the lab knows now: the fixed ones, then per registered sampler its decoded/verified/feature rows."""
    from ..samplers import SAMPLERS

    rows = [
        Row("ce", row_ce, None, uses=FINETUNE_FIELDS, uses_assets=False, kind="baseline"),
        Row("density", row_density, uses=frozenset({"density"}), kind="peer"),
        Row(
            "noise",
            row_noise,
            uses=OUTLIER_FIELDS | FINETUNE_FIELDS,
            uses_assets=False,
            kind="peer",
            noise_outliers=True,
            test_scored=True,
        ),
        Row("inliers", row_inliers, needs_decoder=True, uses=INLIER_FIELDS | FINETUNE_FIELDS, test_scored=True),
    ]
    for name in SAMPLERS:
        decoded = DECODED_FIELDS | FINETUNE_FIELDS
        rows += [
            Row(
                f"decoded:{name}",
                decoded_row(name, False),
                needs_decoder=True,
                uses=decoded,
                sampler=name,
                test_scored=True,
            ),
            Row(
                f"decoded:{name}+verified",
                decoded_row(name, True),
                needs_decoder=True,
                uses=decoded | {"max_id_percentile"},
                sampler=name,
                test_scored=True,
            ),
        ]
    if feature_outliers_available():
        rows.append(Row("ce:init", row_ce_init, None, kind="baseline", test_scored=True))
        rows += [
            Row(
                f"feature:{name}",
                feature_row(name),
                baseline="ce:init",
                uses=OUTLIER_FIELDS | {"density", "sampler_params"},
                sampler=name,
                test_scored=True,
            )
            for name in SAMPLERS
        ]
    from .peers import peer_rows

    rows += peer_rows()
    return {r.name: r for r in rows}


class LabData:
    """A split's ID sets and OOD sets at one image size, loaded once per process."""

    _cache: dict[tuple[str, str, int], tuple] = {}

    @classmethod
    def get(cls, split: ProfileSplit | str, image_size: int) -> tuple[ImageData, ImageData, dict[str, ImageData]]:
        split = split if isinstance(split, ProfileSplit) else ProfileSplit.default(split)
        key = (split.profile, split.key, image_size)
        if key not in cls._cache:
            cls._cache[key] = (
                split.load("train", image_size),
                split.load("test", image_size),
                split.ood_sets(image_size),
            )
        return cls._cache[key]
