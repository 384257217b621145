"""The OOD lab: one cell (profile, row, seed) of the OOD-gain benchmark.

Every default of the project is chosen by measured OOD gain. A *row* is one
way of building a detector; a *cell* trains it with one seed and measures it
on the profile's near-OOD (held-out classes) and far-OOD sets (mean over the
far sets): FPR95 and AUROC of its score. Rows are paired by seed with a
baseline row (``ce`` for most): same seed = same initial weights and the
same ID batches, so a per-seed difference isolates what the outliers did.

The generation side (text-aligned encoder, class-density fit, trained
decoder) is trained once per profile and cached (``LabAssets``); seeds
vary the outlier sampling, the decoding noise and the detector training. The
detector is always trained end to end, CE + beta * L_ood through the whole
network (``train_ood``), never as a head on frozen features.

Adding a row is one entry in ``ROW_BUILDERS`` (or one sampler in
``oodsynth.samplers.SAMPLERS``: its decoded, verified and feature-space rows
follow).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch.utils.data import TensorDataset

from .data import ImageData, image_tensors, load_profile_split, profile_ood_sets
from .densities import DENSITY_KINDS, ClassDensities
from .encoder_training import EncoderCheckpoint, EncoderTrainConfig, load_encoder, train_encoder
from .errors import InputError
from .evaluation import EvaluationReport, evaluate, evaluate_density
from .features import build_bank
from .ood_training import OOD_LOSSES
from .verification import DEFAULT_MAX_ID_PERCENTILE, Verification, images_to_tensor, verify_images


class LabSettings(BaseModel):
    """What a cell depends on, beyond (profile, row, seed). Its hash names the cell cache."""

    model_config = ConfigDict(extra="forbid")

    # the detector: small enough that one animals cell takes ~15-40 s on 2 cores
    arch: str = "resnet10"
    width: int = Field(8, ge=1)
    image_size: int = Field(16, ge=8)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(128, ge=1)
    ood_batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    beta: float = Field(0.5, ge=0, description="weight of L_ood; 0.5 measured best of 2.5 / 0.5 / 0.25 here")
    ood_loss: Literal[OOD_LOSSES] = Field("energy_logistic", description="L_ood of every row with "  # type: ignore[valid-type]
                                          "outliers; rows are ranked by the energy score either way")
    # the outliers
    min_steps: int = Field(300, ge=0, description="epochs grow until the detector takes at least this many ID "
                           "batches (small profiles such as digits get more epochs)")
    outlier_ratio: float = Field(0.1, gt=0, description="outliers reaching the detector per ID training image")
    oversample: float = Field(1.5, ge=1, description="decoded pool per class = oversample * outliers per class; the "
                              "verified row keeps the first ones that pass, the plain row the first ones")
    max_id_percentile: float = Field(DEFAULT_MAX_ID_PERCENTILE, ge=0, le=100, description="verification threshold")
    density: str = "gaussian_full"
    sampler_params: dict[str, dict] = Field(default_factory=dict, description="per sampler, parameters over its "
                                            "defaults, e.g. {\"boundary_crossing\": {\"select\": 300}}: how a "
                                            "parameter default is ranked in the lab")
    outlier_postprocess: str = Field("none", pattern="^(none|binarize)$", description="binarize: threshold decoded "
                                     "images at 0.5 and soften the edges (3x3 Gaussian, sigma 0.6), so silhouette "
                                     "outliers lose the decoder's grey haze and blur, cues that real images never carry")
    decoded_inliers: float = Field(0.0, ge=0, description="decoded ID images per ID training image, added to the "
                                   "detector's ID side (decoded from real ID features, kept when re-encoded to "
                                   "their own class): decoding artifacts then sit on both sides, so L_ood cannot "
                                   "separate the outliers by how they were drawn, only by what they show")
    finetune_epochs: int = Field(0, ge=0, description="0: each row trains its detector from scratch. N: each row "
                                 "fine-tunes the seed's CE-only detector (trained from scratch once, then cached) "
                                 "for N epochs with its own loss, Outlier Exposure's protocol: a row and its CE pair "
                                 "start from the same weights and see the same ID batches, so their difference is "
                                 "the outliers' alone rather than two training trajectories")
    finetune_lr: float = Field(0.01, gt=0, description="the fine-tune's initial learning rate (cosine to 0)")
    decode: dict = Field(default_factory=lambda: {"steps": 10},
                         description="decode settings over the decoder's recommended ones (10 steps: half the CPU)")

    @field_validator("sampler_params")
    @classmethod
    def _known_samplers_and_params(cls, v: dict[str, dict]) -> dict[str, dict]:
        """Fail at --set time, not after hours of other cells: every name a sampler, every parameter its own."""
        from .samplers import get_sampler

        for name, params in v.items():
            try:
                get_sampler(name, params)
            except (InputError, ValidationError) as exc:  # unknown sampler or bad parameter, both with a clear text
                raise ValueError(f"{name}: {exc}") from None
        return v

    def per_class(self, n_train: int, n_classes: int, ratio: float | None = None) -> int:
        """Images per class that reach the detector: ``ratio`` (default ``outlier_ratio``) of the ID training set."""
        return max(1, round((self.outlier_ratio if ratio is None else ratio) * n_train / n_classes))

    def epochs_for(self, n_train: int) -> int:
        return max(self.epochs, math.ceil(self.min_steps / math.ceil(n_train / self.batch_size)))

    def sampler(self, name: str):
        """The sampler ``name`` with this lab's parameters for it (``sampler_params``) over its defaults."""
        from .samplers import get_sampler

        return get_sampler(name, self.sampler_params.get(name))

    def changed_sampler_params(self) -> dict[str, dict]:
        """Per sampler, the parameters that differ from the ones the lab's cells were first cached with: the
        sampler's defaults, except where ``PARAMS_WHEN_CACHED`` records older ones. A changed default thus gets
        its own cells and pools, and asking for it explicitly finds the cells of the run that measured it."""
        from .samplers import get_sampler

        out = {}
        for name in sorted(set(self.sampler_params) | set(PARAMS_WHEN_CACHED)):
            full = self.sampler(name).params.model_dump(mode="json")
            base = {**get_sampler(name).params.model_dump(mode="json"), **PARAMS_WHEN_CACHED.get(name, {})}
            if diff := {k: v for k, v in full.items() if v != base[k]}:
                out[name] = diff
        return out

    def key(self, fields: frozenset[str] | None = None, sampler: str | None = None) -> str:
        """Hash of the settings (or of the detector settings plus ``fields``: what one row depends on; a row
        of one ``sampler`` depends on that sampler's parameters only)."""
        data = self.model_dump(mode="json")
        changed = self.changed_sampler_params()
        data["sampler_params"] = changed if fields is None else {k: v for k, v in changed.items() if k == sampler}
        data = {k: v for k, v in data.items() if LATER_FIELDS.get(k, object()) != v}
        if fields is not None:
            data = {k: v for k, v in data.items() if k in DETECTOR_FIELDS | fields}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


# settings added after cells were cached: left out of the key at their default, so those cells stay valid
LATER_FIELDS = {"outlier_postprocess": "none", "decoded_inliers": 0.0, "finetune_epochs": 0, "finetune_lr": 0.01,
                "ood_loss": "energy_logistic", "sampler_params": {}}
# the values the lab first cached cells with, for every sampler parameter whose default changed since (a later
# change of the same parameter needs no new entry); keys name parameters relative to these
# (LabSettings.changed_sampler_params)
PARAMS_WHEN_CACHED: dict[str, dict] = {"boundary_crossing": {"select": 100, "steps_beyond": 2}}
FROM_SCRATCH = {k: LATER_FIELDS[k] for k in ("finetune_epochs", "finetune_lr")}  # the settings' defaults
DETECTOR_FIELDS = frozenset({"arch", "width", "image_size", "epochs", "min_steps", "batch_size", "lr"})
# only the image rows fine-tune (density and feature rows start from the encoder), so only they key on it
FINETUNE_FIELDS = frozenset(FROM_SCRATCH)
OUTLIER_FIELDS = frozenset({"ood_batch_size", "beta", "outlier_ratio", "ood_loss"})
INLIER_FIELDS = frozenset({"oversample", "density", "decode", "decoded_inliers"})
DECODED_FIELDS = OUTLIER_FIELDS | {"oversample", "density", "decode", "outlier_postprocess", "decoded_inliers",
                                   "sampler_params"}


QUICK = {"epochs": 2, "min_steps": 0, "outlier_ratio": 0.1}


# ----------------------------------------------------------------------------- the generation side

@dataclass
class LabAssets:
    """What a profile's outliers are made with: trained once, cached, shared by every cell."""

    profile: str
    encoder: EncoderCheckpoint
    encoder_path: Path
    fit: ClassDensities
    bank: object  # FeatureBank of the ID training features
    decoder_dir: Path | None = None
    decode: dict = field(default_factory=dict)  # decode settings that suit this decoder

    @property
    def anchors(self) -> np.ndarray:
        return self.encoder.anchors

    @property
    def tag(self) -> str:
        """Names these assets in cell cache files: the decoder folder (its name holds its settings hash)."""
        return self.decoder_dir.name if self.decoder_dir is not None else self.encoder_path.parent.name


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def fit_assets(profile: str, encoder_path: Path, cache: Path, density: str, *, decoder_dir: Path | None = None,
               decode: dict | None = None) -> LabAssets:
    """Load an encoder, fit (or reload the cached fit of) its ID training features, and bundle the assets."""
    if density not in DENSITY_KINDS:
        raise ValueError(f"density: unknown kind {density!r}; choose one of {', '.join(DENSITY_KINDS)}")
    encoder = load_encoder(encoder_path, device="cpu")
    train = load_profile_split(profile, "train", image_size=encoder.config.image_size)
    bank = build_bank(encoder, train, progress=False)
    file = Path(encoder_path) if Path(encoder_path).is_file() else Path(encoder_path) / "encoder.pt"
    stamp = hashlib.sha256(file.read_bytes()).hexdigest()[:10]
    fit_file = cache / f"fit-{density}-{stamp}.bin"
    if fit_file.is_file():
        fit = ClassDensities.from_bytes(fit_file.read_bytes())
    else:
        fit = ClassDensities(kind=density).fit(bank)
        cache.mkdir(parents=True, exist_ok=True)
        _atomic_write(fit_file, fit.to_bytes())
    return LabAssets(profile, encoder, Path(encoder_path), fit, bank, decoder_dir, dict(decode or {}))


def train_local_assets(profile: str, folder: Path, decoder_dir: Path, *, anchors: np.ndarray | None = None,
                       density: str = "gaussian_full", epochs: int = 3, width: int = 8, image_size: int = 16,
                       decode: dict | None = None) -> LabAssets:
    """Small stand-in assets for tests: a quickly trained encoder and any decoder folder.

    ``anchors`` default to ``decoder_dir``'s token rows of the class words; the decoder writes outlier vectors
    into placeholder tokens, so any anchors of its hidden size work.
    """
    from .anchors import extract_anchors

    folder.mkdir(parents=True, exist_ok=True)
    train = load_profile_split(profile, "train", image_size=image_size)
    if not (folder / "encoder.pt").is_file():
        if anchors is None:
            anchors = extract_anchors(decoder_dir, train.class_names)
        config = EncoderTrainConfig(arch="resnet10", width=width, epochs=epochs, batch_size=64, lr=0.05,
                                    image_size=image_size, mean=train.mean, std=train.std, dataset=profile)
        train_encoder(config, train, anchors, folder, device="cpu", progress=False)
    return fit_assets(profile, folder, folder, density, decoder_dir=decoder_dir, decode=decode)


def profile_assets(profile: str, cache: Path, density: str = "gaussian_full", decoder_dir: Path | None = None
                   ) -> LabAssets:
    """The project's trained assets for a profile: ``decoder_dir`` (a ``train-decoder`` folder) when given, else
    ``ensure_profile_assets`` (trained on first use, then cached under ``OODSYNTH_HOME``); with the decode
    settings its training recommends and a fit of its encoder's features, cached in ``cache``."""
    from .decoder_assets import ensure_profile_assets, load_profile_assets

    found = load_profile_assets(decoder_dir) if decoder_dir else ensure_profile_assets(profile, progress=False,
                                                                                       echo=print)
    if list(found.class_names) != load_profile_split(profile, "train").class_names:
        raise ValueError(f"decoder: {found.decoder_dir} was trained for classes {found.class_names}, not {profile}'s")
    return fit_assets(profile, found.encoder_checkpoint, cache / profile, density, decoder_dir=found.decoder_dir,
                      decode=found.decode_settings())


# ----------------------------------------------------------------------------- outliers

_DECODERS: dict[str, object] = {}


def _decoder(path: Path):
    """One loaded decoder per folder per process (loading a pipeline costs seconds)."""
    from .decoding import OutlierDecoder

    key = str(Path(path).resolve())
    if key not in _DECODERS:
        _DECODERS[key] = OutlierDecoder(path, device="cpu")
    return _DECODERS[key]


def smooth_noise(n: int, image_size: int, seed: int) -> torch.Tensor:
    """The noise control: grey 4x4 uniform noise upsampled to ``image_size`` (blobs).

    Deliberately unlike the far-OOD ``noise`` set (per-pixel uniform noise), so
    the control is not trained on a test distribution.
    """
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


@dataclass
class DecodedPool:
    """Decoded outliers of one sampler and seed: images (uint8, N x 3 x S x S at the encoder size) and checks."""

    images: torch.Tensor
    class_index: np.ndarray
    verification: Verification
    sample_seconds: float
    decode_seconds: float

    def choose(self, n_per_class: int, max_id_percentile: float | None) -> np.ndarray:
        """Indices of the first ``n_per_class`` images per class (that pass verification, when a threshold is given)."""
        ok = np.ones(len(self.class_index), bool) if max_id_percentile is None else \
            self.verification.passes(max_id_percentile)
        keep = [np.flatnonzero((self.class_index == c) & ok)[:n_per_class] for c in np.unique(self.class_index)]
        return np.sort(np.concatenate(keep))


def _pool_path(cache: Path, name: str, assets: LabAssets, settings: LabSettings, n_pool: int) -> Path:
    """Where a decoded pool is cached: keyed by the decoder, the decode settings, the pool size and the fit."""
    if assets.decoder_dir is None:
        raise ValueError("decoder: these assets have no decoder folder")
    tag = hashlib.sha256(json.dumps([str(assets.decoder_dir), assets.decode, settings.decode, n_pool,
                                     settings.density]).encode()).hexdigest()[:8]
    return cache / f"decoded-{name}-{tag}.pt"


def _cached_pool(path: Path) -> DecodedPool | None:
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)
    return DecodedPool(state["images"], state["class_index"].numpy(),
                       Verification(*(state[k].numpy() for k in ("id_percentile", "id_class", "max_softmax"))),
                       float(state["sample_seconds"]), float(state["decode_seconds"]))


def _decode_verified(assets: LabAssets, vectors: np.ndarray, class_index: np.ndarray, seed: int,
                     settings: LabSettings, path: Path, sample_seconds: float = 0.0) -> DecodedPool:
    """Decode ``vectors`` (one image each, seeded per image), re-encode them, cache the pool at ``path``."""
    t1 = time.perf_counter()
    seeds = [seed * 1_000_003 + i for i in range(len(vectors))]
    size = assets.encoder.config.image_size
    decode = {**{"steps": 20, "guidance_scale": 3.0}, **assets.decode, **settings.decode}
    images = _decoder(assets.decoder_dir).decode(vectors, seeds, **{"output_size": size, **decode})
    t2 = time.perf_counter()
    x = images_to_tensor(images, size)
    verification = verify_images(assets.encoder, assets.fit, x)
    pool = DecodedPool((x * 255).round().to(torch.uint8), np.asarray(class_index), verification, sample_seconds,
                       t2 - t1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save({"images": pool.images, "class_index": torch.from_numpy(pool.class_index),
                "id_percentile": torch.from_numpy(verification.id_percentile),
                "id_class": torch.from_numpy(verification.id_class),
                "max_softmax": torch.from_numpy(verification.max_softmax),
                "sample_seconds": pool.sample_seconds, "decode_seconds": pool.decode_seconds}, tmp)
    tmp.replace(path)  # atomic: two benchmark processes may share the cache
    return pool


def decoded_pool(assets: LabAssets, sampler: str, seed: int, settings: LabSettings, cache: Path) -> DecodedPool:
    """Sample ``oversample * n_per_class`` vectors per class, decode, re-encode; cached per (sampler, seed)."""
    n_pool = int(np.ceil(settings.oversample * settings.per_class(len(assets.bank.labels), assets.fit.n_classes)))
    changed = settings.changed_sampler_params().get(sampler)
    tag = f"-{hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]}" if changed else ""
    path = _pool_path(cache, f"{sampler}{tag}-s{seed}", assets, settings, n_pool)
    if (pool := _cached_pool(path)) is not None:
        return pool
    t0 = time.perf_counter()
    result = settings.sampler(sampler).sample(assets.fit, n_pool, seed=seed, bank=assets.bank)
    return _decode_verified(assets, result.vectors, result.class_index, seed, settings, path,
                            time.perf_counter() - t0)


def decoded_inlier_pool(assets: LabAssets, seed: int, settings: LabSettings, cache: Path) -> DecodedPool:
    """ID training features (random, ``oversample * decoded_inliers`` per ID image and class), decoded and
    re-encoded: the decoder's reconstructions of real ID images. Cached per seed."""
    labels = assets.bank.labels
    n_classes = assets.fit.n_classes
    n_pool = int(np.ceil(settings.oversample * settings.per_class(len(labels), n_classes, settings.decoded_inliers)))
    path = _pool_path(cache, f"inliers-s{seed}", assets, settings, n_pool)
    if (pool := _cached_pool(path)) is not None:
        return pool
    rng = np.random.default_rng([seed, 7])
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), n_pool, replace=n_pool > (labels == c).sum())
                          for c in range(n_classes)])
    vectors = assets.bank.features[idx] * np.linalg.norm(assets.anchors[labels[idx]], axis=1, keepdims=True)
    return _decode_verified(assets, vectors.astype(np.float32), labels[idx], seed + 500_000, settings, path)


# ----------------------------------------------------------------------------- rows

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


@dataclass
class CellOutcome:
    report: EvaluationReport
    score: str  # the score the row is ranked by
    info: dict = field(default_factory=dict)


def _ood_config(cell: Cell, beta: float, n_outliers: int = 0, *, finetune: bool = True, **extra):
    """The detector's config. The outlier batch grows when needed so that an epoch is one pass over the ID
    images whatever the outlier count: a row and its CE pair then take exactly the same ID steps. With
    ``finetune_epochs`` (and ``finetune``) it fine-tunes the seed's pretrained CE-only detector."""
    from .ood_training import OODTrainConfig

    s = cell.settings
    id_steps = math.ceil(len(cell.train) / s.batch_size)
    ood_batch_size = max(s.ood_batch_size, math.ceil(n_outliers / id_steps))
    epochs, lr = s.epochs_for(len(cell.train)), s.lr
    if finetune and s.finetune_epochs:
        epochs, lr = s.finetune_epochs, s.finetune_lr
        extra["init_classifier"] = str(pretrained_detector(cell))
    return OODTrainConfig(arch=s.arch, width=s.width, epochs=epochs, batch_size=s.batch_size,
                          ood_batch_size=ood_batch_size, lr=lr, beta=beta, ood_loss=s.ood_loss, seed=cell.seed,
                          dataset=cell.profile,
                          image_size=s.image_size, mean=cell.train.mean, std=cell.train.std, **extra)


def pretrained_detector(cell: Cell) -> Path:
    """The seed's CE-only detector trained from scratch (the ``ce`` row's model without fine-tuning): the
    checkpoint every fine-tuning row starts from, trained once and cached."""
    from .ood_training import CHECKPOINT_NAME, train_ood

    scratch = cell.settings.model_copy(update=FROM_SCRATCH)
    path = cell.cache / f"pretrained-s{cell.seed}-{scratch.key(frozenset())}.pt"
    if not path.is_file():
        work = cell.work / "pretrained"
        train_ood(_ood_config(replace(cell, settings=scratch), 0.0, finetune=False), cell.train, work,
                  device="cpu", progress=False)
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
    keep = np.sort(np.concatenate([np.flatnonzero((pool.class_index == c) & faithful)[:n_per_class]
                                   for c in np.unique(pool.class_index)]))
    info = {"inlier_pool": len(pool.class_index), "inliers": len(keep),
            "inlier_faithful_rate": float(faithful.mean()),
            "inlier_median_id_percentile": float(np.median(pool.verification.id_percentile))}
    x = _as_float_images(pool.images[torch.from_numpy(keep)], s.image_size)
    return x, torch.from_numpy(pool.class_index[keep]).long(), info


def _train_and_evaluate(cell: Cell, outliers: torch.Tensor | None, info: dict | None = None, *,
                        inliers: bool = False) -> CellOutcome:
    """Train the detector (CE, plus beta * L_ood when ``outliers`` are given) and evaluate it; with ``inliers``
    the seed's decoded ID images join the ID training set (the same epochs, so a few more steps)."""
    from .ood_training import train_ood

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
    report = evaluate(clf, cell.test, cell.ood_sets, progress=False)
    return CellOutcome(report, "energy", {"n_outliers": 0 if ds is None else len(ds), **info})


def row_ce(cell: Cell) -> CellOutcome:
    """CE only: the baseline every row is paired with."""
    return _train_and_evaluate(cell, None)


def row_density(cell: Cell) -> CellOutcome:
    """No outliers: max class log-density of a text-aligned encoder trained with this seed at the same budget.

    The fit is to that encoder's own training features (Gaussian by default: a Mahalanobis-like score).
    """
    s = cell.settings
    anchors = cell.assets().anchors
    config = EncoderTrainConfig(arch=s.arch, width=s.width, epochs=s.epochs_for(len(cell.train)),
                                batch_size=s.batch_size, lr=s.lr,
                                seed=cell.seed, image_size=s.image_size, mean=cell.train.mean, std=cell.train.std,
                                dataset=cell.profile)
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
        keep = pool.choose(s.per_class(len(cell.train), len(cell.train.class_names)),
                           s.max_id_percentile if verified else None)
        info = {"pool": len(pool.class_index), "sample_s": pool.sample_seconds, "decode_s": pool.decode_seconds,
                "pool_pass_rate": float(pool.verification.passes(s.max_id_percentile).mean()),
                "pool_median_id_percentile": float(np.median(pool.verification.id_percentile)),
                "kept_median_id_percentile": float(np.median(pool.verification.id_percentile[keep])) if len(keep)
                else float("nan")}
        if len(keep) == 0:
            raise ValueError(f"max_id_percentile: no decoded {sampler} outlier passes {s.max_id_percentile}")
        images = pool.images[torch.from_numpy(keep)]
        if s.outlier_postprocess == "binarize":
            from torchvision.transforms.functional import gaussian_blur

            images = gaussian_blur((images > 127).float(), [3, 3], [0.6, 0.6])
        return _train_and_evaluate(cell, images, info, inliers=s.decoded_inliers > 0)

    run.__doc__ = f"{sampler} vectors decoded by the trained decoder{', verified' if verified else ''}."
    return run


def feature_outliers_available() -> bool:
    from .ood_training import train_ood

    return "feature_outliers" in inspect.signature(train_ood).parameters


def _train_from_encoder(cell: Cell, feature_outliers=None, info: dict | None = None) -> CellOutcome:
    """Train end to end starting from the assets' text-aligned encoder (its arch, width and image size; anchor
    head), with feature-space outliers when given; evaluated at the encoder's image size. These rows always
    start from the encoder: ``finetune_epochs`` does not apply to them (nor to their cache key)."""
    from .ood_training import train_ood

    s, assets = cell.settings, cell.assets()
    size = assets.encoder.config.image_size
    train, test, ood_sets = LabData.get(cell.profile, size)
    at_size = Cell(cell.profile, cell.seed, s.model_copy(update={"image_size": size}), train, test, ood_sets,
                   cell.cache, cell.work, cell.assets)
    n = 0 if feature_outliers is None else len(feature_outliers.vectors)
    beta = s.beta if feature_outliers is not None else 0.0
    config = _ood_config(at_size, beta, n, finetune=False, init_encoder=str(assets.encoder_path))
    clf = train_ood(config, train, cell.work, feature_outliers=feature_outliers, device="cpu", progress=False)
    return CellOutcome(evaluate(clf, test, ood_sets, progress=False), "energy", {"n_outliers": n, **(info or {})})


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

    @property
    def description(self) -> str:
        return (self.run.__doc__ or "").strip().split("\n")[0]


def lab_rows() -> dict[str, Row]:
    """Every row the lab knows now: the fixed ones, then per registered sampler its decoded/verified/feature rows."""
    from .samplers import SAMPLERS

    rows = [Row("ce", row_ce, None, uses=FINETUNE_FIELDS, uses_assets=False),
            Row("density", row_density, uses=frozenset({"density"})),
            Row("noise", row_noise, uses=OUTLIER_FIELDS | FINETUNE_FIELDS, uses_assets=False),
            Row("inliers", row_inliers, needs_decoder=True, uses=INLIER_FIELDS | FINETUNE_FIELDS)]
    for name in SAMPLERS:
        decoded = DECODED_FIELDS | FINETUNE_FIELDS
        rows += [Row(f"decoded:{name}", decoded_row(name, False), needs_decoder=True, uses=decoded, sampler=name),
                 Row(f"decoded:{name}+verified", decoded_row(name, True), needs_decoder=True,
                     uses=decoded | {"max_id_percentile"}, sampler=name)]
    if feature_outliers_available():
        rows.append(Row("ce:init", row_ce_init, None))
        rows += [Row(f"feature:{name}", feature_row(name), baseline="ce:init",
                     uses=OUTLIER_FIELDS | {"density", "sampler_params"}, sampler=name) for name in SAMPLERS]
    return {r.name: r for r in rows}


# ----------------------------------------------------------------------------- running cells

def metrics_of(outcome: CellOutcome) -> dict:
    """near/far FPR95 and AUROC of the row's score (far = mean over the far sets), plus every raw number."""
    sets = outcome.report.results[outcome.score]
    near = [m for name, m in sets.items() if name.startswith("near:")]
    far = [m for name, m in sets.items() if name.startswith("far:")]
    summary = {f"{group}_{m}": float(np.mean([r[m] for r in rows]))
               for group, rows in (("near", near), ("far", far)) for m in ("fpr95", "auroc")}
    return {**summary, "id_accuracy": outcome.report.id_accuracy, "score": outcome.score,
            "report": outcome.report.to_dict(), **outcome.info}


def cell_path(out: Path, profile: str, row: Row, seed: int, settings: LabSettings, assets_tag: str = "") -> Path:
    """A cell's cache file; keyed by the settings the row uses (so e.g. a new threshold reruns verified rows only)
    and by the assets it was built from."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", row.name)
    tag = f"-{assets_tag}" if assets_tag else ""
    return out / "cells" / profile / safe / f"{settings.key(row.uses, row.sampler)}{tag}-seed{seed}.json"


class LabData:
    """A profile's splits and OOD sets at one image size, loaded once per process."""

    _cache: dict[tuple[str, int], tuple] = {}

    @classmethod
    def get(cls, profile: str, image_size: int) -> tuple[ImageData, ImageData, dict[str, ImageData]]:
        key = (profile, image_size)
        if key not in cls._cache:
            cls._cache[key] = (load_profile_split(profile, "train", image_size=image_size),
                               load_profile_split(profile, "test", image_size=image_size),
                               profile_ood_sets(profile, image_size=image_size))
        return cls._cache[key]


class CellNotRun(LookupError):
    """A cell asked for with ``cached_only`` has no cached result."""


def run_cell(profile: str, row: Row, seed: int, settings: LabSettings, out: Path,
             assets: Callable[[], LabAssets], *, cached_only: bool = False) -> dict:
    """Run one cell, or return its cached result; the result is written to ``cell_path`` as JSON."""
    path = cell_path(out, profile, row, seed, settings, assets().tag if row.uses_assets else "")
    if path.is_file():
        return json.loads(path.read_text())
    if cached_only:
        raise CellNotRun("not run yet (summary of cached cells only)")
    train, test, ood_sets = LabData.get(profile, settings.image_size)
    work = Path(tempfile.mkdtemp(prefix="oodlab-"))
    cache = out / "cache" / profile
    try:
        t0 = time.perf_counter()
        outcome = row.run(Cell(profile, seed, settings, train, test, ood_sets, cache, work, assets))
        result = {"profile": profile, "row": row.name, "seed": seed, "baseline": row.baseline,
                  "seconds": time.perf_counter() - t0, **metrics_of(outcome)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(result, indent=1).encode())
    return result


# ----------------------------------------------------------------------------- summaries

METRICS = ("near_fpr95", "near_auroc", "far_fpr95", "far_auroc")


def paired_deltas(rows: dict[int, dict], baseline: dict[int, dict]) -> dict[str, dict]:
    """Per metric, the per-seed differences ``rows - baseline`` over their common seeds: mean, std, n and
    ``t`` = mean / standard error (std with ddof=1); empty without a common seed."""
    common = sorted(set(rows) & set(baseline))
    out = {}
    for m in METRICS if common else ():
        d = np.array([rows[s][m] - baseline[s][m] for s in common])
        sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
        se = sd / np.sqrt(len(d)) if len(d) > 1 else 0.0
        out[m] = {"mean": float(d.mean()), "std": sd, "n": len(d), "t": float(d.mean() / se) if se > 0 else None}
    return out


def summarise(cells: list[dict], against: str | None = None) -> dict:
    """Per (profile, row): mean/std of each metric over seeds, and the paired per-seed difference to its baseline
    (``delta_<metric>``), for a row run under ``--versus`` settings too, to that twin (``twin_delta_<metric>``),
    and with ``against``, to that row (``against_delta_<metric>``: one sampler head to head with another).
    """
    by = {}
    for c in cells:
        by.setdefault((c["profile"], c["row"]), {})[c["seed"]] = c
    twins = {c["twin"] for c in cells if c.get("twin")}
    out: dict = {}
    for (profile, row), seeds in by.items():
        first = next(iter(seeds.values()))
        entry = {"n_seeds": len(seeds), "baseline": first["baseline"],
                 "seconds_mean": float(np.mean([c["seconds"] for c in seeds.values()]))}
        for m in (*METRICS, "id_accuracy"):
            v = np.array([c[m] for c in seeds.values()])
            entry[m] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        # A --versus twin ran under other settings than the against row: it is paired with its own row instead.
        head_to_head = against if against not in (None, row, entry["baseline"]) and row not in twins else None
        for prefix, other in (("delta", entry["baseline"]), ("twin_delta", first.get("twin")),
                              ("against_delta", head_to_head)):
            if other and (base := by.get((profile, other))):
                entry.update({f"{prefix}_{m}": d for m, d in paired_deltas(seeds, base).items()})
        if first.get("twin"):
            entry["twin"] = first["twin"]
        if head_to_head:
            entry["against"] = head_to_head
        out.setdefault(profile, {})[row] = entry
    return out


def markdown_table(summary: dict, profile: str) -> str:
    """One markdown table per profile, in percent; Δ = paired per-seed difference to the row's baseline."""
    head = ("| row | near FPR95 ↓ | near AUROC ↑ | far FPR95 ↓ | far AUROC ↑ | Δ near FPR95 (mean ± std, t) | "
            "Δ near AUROC | Δ far FPR95 | ID acc | seeds |")
    lines = [head, "|" + "---|" * 10]

    def ms(e):
        return f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f}"

    def delta(e, m, prefix="delta"):
        d = e.get(f"{prefix}_{m}")
        if not d:
            return "–"
        t = f", t {d['t']:+.1f}" if d["t"] is not None else ""
        return f"{100 * d['mean']:+.1f} ± {100 * d['std']:.1f}{t}"

    for row, e in summary[profile].items():
        base = f" (vs {e['baseline']})" if e["baseline"] not in (None, "ce") else ""
        lines.append(f"| {row}{base} | {ms(e['near_fpr95'])} | {ms(e['near_auroc'])} | {ms(e['far_fpr95'])} | "
                     f"{ms(e['far_auroc'])} | {delta(e, 'near_fpr95')} | {delta(e, 'near_auroc')} | "
                     f"{delta(e, 'far_fpr95')} | {100 * e['id_accuracy']['mean']:.1f} | {e['n_seeds']} |")
    for prefix, other, title in (
            ("twin_delta", "twin", "Each row paired with itself under the `--versus` settings (Δ = row − twin, same seed):"),
            ("against_delta", "against", "Each row head to head with the `--against` row (Δ = row − that row, same seed):")):
        paired = [(row, e) for row, e in summary[profile].items() if e.get(f"{prefix}_near_fpr95")]  # common seeds only
        if paired:
            lines += ["", title, "", f"| row | {other} | Δ near FPR95 (mean ± std, t) | Δ near AUROC | Δ far FPR95 | seeds |",
                      "|" + "---|" * 6]
            lines += [f"| {row} | {e[other]} | {delta(e, 'near_fpr95', prefix)} | {delta(e, 'near_auroc', prefix)} | "
                      f"{delta(e, 'far_fpr95', prefix)} | {e[f'{prefix}_near_fpr95']['n']} |" for row, e in paired]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the whole benchmark

def run_benchmark(profiles: list[str], row_names: list[str], seeds: list[int], settings: LabSettings, out: Path,
                  assets_for: Callable[[str], Callable[[], LabAssets]], *,
                  log: Callable[[str], None] = print, name: str = "results", cached_only: bool = False,
                  versus: tuple[str, LabSettings] | None = None, against: str | None = None) -> dict:
    """Every (profile, seed, row) cell (cached), the results written after each cell; returns the results dict.

    A failing cell is recorded under ``failures`` and the others go on. Each row's baseline is run too.
    ``versus`` = (label, other settings): every row whose cells those settings change is also run under them,
    as the row "<row> [<label>]", and paired with it seed by seed (how one setting is ranked against another).
    ``against`` = a row that is run too and that every other row is also paired with, seed by seed (how one
    sampler is ranked against another under the same settings).
    """
    rows = lab_rows()
    unknown = [r for r in row_names if r not in rows]
    if unknown:
        raise ValueError(f"rows: unknown rows {unknown}; known rows: {', '.join(rows)}")
    if against is not None and against not in rows:
        raise ValueError(f"against: unknown row {against!r}; known rows: {', '.join(rows)}")
    chosen = list(dict.fromkeys([b for r in row_names if (b := rows[r].baseline)] + list(row_names)
                                + ([against] if against else [])))
    if versus is not None and versus[1].density != settings.density:
        raise ValueError("versus: density changes the generation side (one per run); compare densities in two runs")
    out.mkdir(parents=True, exist_ok=True)
    cells, failures = [], []
    total, done, t0 = len(profiles) * len(chosen) * len(seeds), 0, time.perf_counter()
    log(f"settings {settings.key()}: {settings.model_dump()}")
    log(f"{total} cells: profiles {profiles}, seeds {seeds}, rows {chosen}")
    for profile in profiles:
        assets = assets_for(profile)
        for seed in seeds:  # seeds outermost: an interrupted run still has every row at the first seeds
            for row_name in chosen:
                done += 1
                row = rows[row_name]
                twin = twin_name(row, settings, versus) if versus is not None else None
                runs = [(row_name, settings, row.baseline)]
                if twin:  # paired with the baseline's twin, or with the baseline where versus leaves it alone
                    twin_baseline = row.baseline and (twin_name(rows[row.baseline], settings, versus) or row.baseline)
                    runs.append((twin, versus[1], twin_baseline))
                for name_, cell_settings, baseline in runs:
                    try:
                        c = run_cell(profile, row, seed, cell_settings, out, assets, cached_only=cached_only)
                    except Exception as exc:  # one broken row must not lose the others; it is reported
                        failures.append({"profile": profile, "row": name_, "seed": seed,
                                         "error": f"{type(exc).__name__}: {exc}"})
                        log(f"[{done}/{total}] {profile} {name_} seed {seed}: FAILED {failures[-1]['error']}")
                        break  # a row that failed has no twin to pair with
                    cells.append({**c, "row": name_, "baseline": baseline,
                                  **({"twin": twin} if name_ == row_name and twin else {})})
                    log(f"[{done}/{total}] {profile} {name_} seed {seed}: near FPR95 {100 * c['near_fpr95']:.1f} "
                        f"far FPR95 {100 * c['far_fpr95']:.1f} ID acc {100 * c['id_accuracy']:.1f} "
                        f"({c['seconds']:.0f} s; {time.perf_counter() - t0:.0f} s total)")
                write_results(out, settings, cells, failures, name, versus, against)
    return write_results(out, settings, cells, failures, name, versus, against)


def twin_name(row: Row, settings: LabSettings, versus: tuple[str, LabSettings]) -> str | None:
    """The name of ``row`` under the ``versus`` settings, or None where those settings leave its cells as they are."""
    label, other = versus
    return f"{row.name} [{label}]" if settings.key(row.uses, row.sampler) != other.key(row.uses, row.sampler) else None


def write_results(out: Path, settings: LabSettings, cells: list[dict], failures: list[dict],
                  name: str = "results", versus: tuple[str, LabSettings] | None = None,
                  against: str | None = None) -> dict:
    """OUT/<name>.json (settings, summary, cells without their full reports, failures), <name>.md, <name>.png."""
    from .plots import plot_ood_gain

    summary = summarise(cells, against) if cells else {}
    results = {"settings": settings.model_dump(), "summary": summary,
               "cells": [{k: v for k, v in c.items() if k != "report"} for c in cells], "failures": failures}
    if versus is not None:
        results["versus"] = {"label": versus[0], "settings": versus[1].model_dump()}
    if against is not None:
        results["against"] = against
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    md = [f"# OOD gain (lab settings {settings.key()})", "",
          "Percent; mean ± std over seeds; Δ = paired per-seed difference to the row's baseline (CE only unless "
          "named), t = mean / standard error of the paired differences. Score: energy (density row: max class "
          "log-density); far = mean over the far-OOD sets.", ""]
    if versus is not None:
        md += [f"Rows named `[{versus[0]}]` ran with those settings changed (lab settings {versus[1].key()}).", ""]
    for profile in summary:
        md += [f"## {profile}", "", markdown_table(summary, profile), ""]
    if failures:
        md += ["## failed cells", ""]
        md += [f"- {f['profile']} {f['row']} seed {f['seed']}: {f['error']}" for f in failures]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    if summary:
        plot_ood_gain(summary, out / f"{name}.png")
    return results
