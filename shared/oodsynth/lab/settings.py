"""What a lab cell depends on beyond (profile, row, seed): ``LabSettings`` and the cache-key field sets."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..decoding.verification import DEFAULT_MAX_ID_PERCENTILE, MAX_MARGIN, Selection
from ..encoding.recipe import (
    RECIPE_MIXING_SHARE,
    RECIPE_NOISE_SHARE,
    EncoderArch,
    Epochs,
    ImageSize,
    LearningRate,
    ModelRecipe,
    Width,
)
from ..errors import InputError
from ..training.ood_config import OodLoss
from ..training.outlier_mix import check_shares

# the post-hoc detectors and their parameters (pytorch-ood keywords), chosen on the dev splits (bench/posthoc_params.py)
POSTHOC_PARAMS: dict[str, dict] = {
    "msp": {},
    "maxlogit": {},
    "energy": {},
    "mahalanobis": {},
    "rmd": {},
    "knn": {"k": 1},  # of 1, 5, 10, 50, 100: near/far FPR95 35.5/29.2 against 41.8/33.6 for k 50
    "vim": {},  # d = D / 2 (training.detectors): of 8, 16, 32, 48 at the lab's D = 64, 32 won; D / 2 fits any width
    "react": {"percentile": 0.8},  # of 0.8, 0.9, 0.95, 0.99: 42.9/26.7 against 39.3/37.5 for 0.9
}
# the feature-space and fused scores (training.detectors.FusedDetector) every cell trained end to end is also
# scored by, at POSTHOC_PARAMS: the test-time scores that ``test_score`` chooses from on the dev splits
LAB_SCORES = ("mahalanobis", "knn", "vim", "energy+mahalanobis", "energy+knn", "energy+vim", "energy+knn+mahalanobis")


def detector_params(names: list[str] | tuple[str, ...]) -> dict[str, dict]:
    """``POSTHOC_PARAMS`` of every detector in ``names``, fused ones (``energy+knn``) by their parts."""
    from ..training.detectors import SEPARATOR

    return {part: POSTHOC_PARAMS[part] for name in names for part in name.split(SEPARATOR)}


class LabSettings(ModelRecipe):
    """What a cell depends on, beyond (profile, row, seed). Its hash names the cell cache.

    The detector's model and steps are ``encoding.recipe.ModelRecipe``'s fields (declared there, once, for the
    encoder, the trainer and the lab); ``ood_config`` hands them to the trainer with ``OODTrainConfig.from_recipe``.
    """

    model_config = ConfigDict(extra="forbid")

    # the detector: small enough that one animals cell takes ~15-40 s on 2 cores (batch size: the recipe's 128)
    arch: EncoderArch = "resnet10"
    width: Width = 8
    image_size: Annotated[ImageSize, Field(ge=8)] = 16
    epochs: Epochs = 8
    lr: LearningRate = 0.05
    ood_batch_size: int = Field(64, ge=1)
    beta: float = Field(0.5, ge=0, description="weight of L_ood; 0.5 measured best of 2.5 / 0.5 / 0.25 here")
    ood_loss: OodLoss = Field(
        "energy_logistic",
        description="L_ood of every row with outliers; rows are ranked by the energy score either way",
    )
    # the outliers
    min_steps: int = Field(
        300,
        ge=0,
        description="epochs grow until the detector takes at least this many ID "
        "batches (small profiles such as digits get more epochs)",
    )
    outlier_ratio: float = Field(0.1, gt=0, description="outliers reaching the detector per ID training image")
    oversample: float = Field(
        1.5,
        ge=1,
        description="decoded pool per class = oversample * outliers per class; the "
        "verified row keeps the first ones that pass, the plain row the first ones",
    )
    max_id_percentile: float = Field(DEFAULT_MAX_ID_PERCENTILE, ge=0, le=100, description="verification threshold")
    min_id_percentile: float = Field(
        0.0,
        ge=0,
        le=100,
        description="the verified rows' lower ID-percentile bound (below max_id_percentile): drops the decodings "
        "that re-encode as most OOD, blobs and decoder artefacts; 0: no lower bound (the single threshold)",
    )
    max_margin: float | None = Field(
        None,
        ge=0,
        le=MAX_MARGIN,
        description="the verified rows keep only decodings whose re-encoded top-1 minus top-2 anchor cosine is at "
        "most this (ambiguous between two ID classes, after HamOS/BOOD); None: no margin filter",
    )
    density: str = "gaussian_full"
    sampler_params: dict[str, dict] = Field(
        default_factory=dict,
        description="per sampler, parameters over its "
        'defaults, e.g. {"boundary_crossing": {"select": 300}}: how a '
        "parameter default is ranked in the lab",
    )
    outlier_postprocess: str = Field(
        "none",
        pattern="^(none|binarize)$",
        description="binarize: threshold decoded "
        "images at 0.5 and soften the edges (3x3 Gaussian, sigma 0.6), so silhouette "
        "outliers lose the decoder's grey haze and blur, cues that real images never carry",
    )
    decoded_inliers: float = Field(
        0.0,
        ge=0,
        description="decoded ID images per ID training image, added to the "
        "detector's ID side (decoded from real ID features, kept when re-encoded to "
        "their own class): decoding artifacts then sit on both sides, so L_ood cannot "
        "separate the outliers by how they were drawn, only by what they show",
    )
    finetune_epochs: int = Field(
        0,
        ge=0,
        description="0: each row trains its detector from scratch. N: each row "
        "fine-tunes the seed's CE-only detector (trained from scratch once, then cached) "
        "for N epochs with its own loss, Outlier Exposure's protocol: a row and its CE pair "
        "start from the same weights and see the same ID batches, so their difference is "
        "the outliers' alone rather than two training trajectories",
    )
    finetune_lr: float = Field(0.01, gt=0, description="the fine-tune's initial learning rate (cosine to 0)")
    test_score: str = Field(
        "knn",
        description="the score that ranks every row trained end to end (ce excepted: it is CE with "
        "energy; the post-hoc rows give it every other score): energy or one of LAB_SCORES. A test-time choice: "
        "every trained cell holds all of LAB_SCORES, so it is in no cache key. knn (k 1, on the trained model's "
        "own features) won on the dev splits (bench/results/ood_protocol/choose_defaults.md)",
    )
    noise_share: float = Field(
        RECIPE_NOISE_SHARE,
        ge=0,
        lt=1,
        description="share of a decoded row's outliers that are smooth noise instead (the outlier mix, with "
        "``mixing_share``): the same number of outliers in all. A quarter each of noise and cutmix won on the dev "
        "splits (bench/results/ood_protocol/choose_defaults.md)",
    )
    mixing_share: float = Field(
        RECIPE_MIXING_SHARE,
        ge=0,
        lt=1,
        description="share of a decoded row's outliers that are image-space mixing outliers of two ID images of "
        "different classes instead (``mixing_kind``; the outlier mix, with ``noise_share``): the same number of "
        "outliers in all",
    )
    mixing_kind: Literal["mixup", "cutmix"] = Field("cutmix", description="the mixing of ``mixing_share``")
    init_strength: float = Field(
        0.0,
        ge=0,
        le=1,
        description="0: decode every outlier from its seed's noise. s in (0, 1]: SDEdit, start from a real ID "
        "training image of the vector's source class noised to strength s and denoise towards the vector "
        "(OutlierDecoder.decode's init_images); int(steps * s) denoising steps run, so give ``decode`` enough steps",
    )
    decode: dict = Field(
        default_factory=dict,
        description="decode settings over the decoder's recommended ones (its decoder.json: the settings its "
        "quality gate was judged at)",
    )

    @field_validator("sampler_params")
    @classmethod
    def _known_samplers_and_params(cls, v: dict[str, dict]) -> dict[str, dict]:
        """Fail at --set time, not after hours of other cells: every name a sampler, every parameter its own."""
        from ..samplers import get_sampler

        for name, params in v.items():
            try:
                get_sampler(name, params)
            except (InputError, ValidationError) as exc:  # unknown sampler or bad parameter, both with a clear text
                raise ValueError(f"{name}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _a_share_left_for_decoded(self) -> LabSettings:
        check_shares(self.noise_share, self.mixing_share)
        return self

    @field_validator("min_id_percentile")
    @classmethod
    def _a_band(cls, v: float, info: ValidationInfo) -> float:
        """A minimum at or above the maximum keeps nothing: fail at --set time, with Selection's own check."""
        if "max_id_percentile" in info.data:
            try:
                Selection(v, info.data["max_id_percentile"])
            except InputError as exc:
                raise ValueError(exc.message) from None
        return v

    @field_validator("test_score")
    @classmethod
    def _a_lab_score(cls, v: str) -> str:
        if v not in ("energy", *LAB_SCORES):
            raise ValueError(f"choose from energy, {', '.join(LAB_SCORES)}")
        return v

    def per_class(self, n_train: int, n_classes: int, ratio: float | None = None) -> int:
        """Images per class that reach the detector: ``ratio`` (default ``outlier_ratio``) of the ID training set."""
        return max(1, round((self.outlier_ratio if ratio is None else ratio) * n_train / n_classes))

    @property
    def selection(self) -> Selection:
        """What the verified rows keep of a decoded pool."""
        return Selection(self.min_id_percentile, self.max_id_percentile, self.max_margin)

    def epochs_for(self, n_train: int) -> int:
        return max(self.epochs, math.ceil(self.min_steps / math.ceil(n_train / self.batch_size)))

    def sampler(self, name: str):
        """The sampler ``name`` with this lab's parameters for it (``sampler_params``) over its defaults."""
        from ..samplers import get_sampler

        return get_sampler(name, self.sampler_params.get(name))

    def key(self, fields: frozenset[str] | None = None, sampler: str | None = None) -> str:
        """Hash of the settings, or of what one row depends on: the detector settings plus ``fields``, and for a
        row of one ``sampler`` that sampler's full parameters (its defaults included, so a changed default gets
        its own cells)."""
        data = self.model_dump(mode="json")
        if not self.mixing_share:  # no mixing outliers: the recipe (and its cells) whatever the kind would be
            del data["mixing_share"], data["mixing_kind"]
        for name, default in KEYED_WHEN_SET.items():  # at its default, a later field keeps the earlier cells' keys
            if data[name] == default:
                del data[name]
        if fields is not None:
            data = {k: v for k, v in data.items() if k in DETECTOR_FIELDS | fields}
            if "sampler_params" in data:
                data["sampler_params"] = self.sampler_key(sampler) if sampler else {}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]

    def sampler_key(self, name: str) -> dict:
        """Every parameter of sampler ``name`` as this lab runs it (its defaults under ``sampler_params``)."""
        return self.sampler(name).params.model_dump(mode="json")


# fields added after cells were cached, at their defaults (the selection beyond the single threshold, decoding from
# noise): keyed as before these fields existed
KEYED_WHEN_SET = {"min_id_percentile": 0.0, "max_margin": None, "init_strength": 0.0}
# what a verified row keeps of its decoded pool (LabSettings.selection)
SELECTION_FIELDS = frozenset({"min_id_percentile", "max_id_percentile", "max_margin"})
FROM_SCRATCH = {"finetune_epochs": 0, "finetune_lr": 0.01}  # the settings' defaults: train from scratch
DETECTOR_FIELDS = frozenset({"arch", "width", "image_size", "epochs", "min_steps", "batch_size", "lr"})
# only the image rows fine-tune (density and feature rows start from the encoder), so only they key on it
FINETUNE_FIELDS = frozenset(FROM_SCRATCH)
OUTLIER_FIELDS = frozenset({"ood_batch_size", "beta", "outlier_ratio", "ood_loss"})
INLIER_FIELDS = frozenset({"oversample", "density", "decode", "decoded_inliers"})
DECODED_FIELDS = OUTLIER_FIELDS | {
    "noise_share",
    "mixing_share",
    "mixing_kind",
    "oversample",
    "density",
    "decode",
    "init_strength",
    "outlier_postprocess",
    "decoded_inliers",
    "sampler_params",
}


QUICK = {"epochs": 2, "min_steps": 0, "outlier_ratio": 0.1}
