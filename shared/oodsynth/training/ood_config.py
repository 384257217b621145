"""What ``train-ood`` is asked to do: the run's settings, validated when they are made."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from ..densities import DENSITY_KINDS
from ..encoding.recipe import TrainingRun
from .outlier_mix import CHEAP_RECIPES, check_shares
from .virtual_outliers import VIRTUAL_OUTLIERS, get_virtual_sampler

OodLoss = Literal["energy_logistic", "outlier_exposure"]
CheapRecipe = Literal["noise", "cutmix", "mixup", "noise+cutmix"]
assert set(get_args(CheapRecipe)) == set(CHEAP_RECIPES)  # one list of the generator-free recipes
OOD_LOSSES: tuple[OodLoss, ...] = get_args(OodLoss)


class OODTrainConfig(TrainingRun):
    """One ``train-ood`` run: the recipe (``encoding.recipe``: arch, width, image size, epochs, batch size, lr, seed,
    normalisation, at the trainer's defaults) and what CE + beta * L_ood adds to it."""

    ood_batch_size: int = Field(128, ge=1, description="outlier images per step")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    beta: float = Field(
        0.5,
        ge=0,
        description="weight of L_ood; 0 = CE-only baseline. 0.5 measured best of "
        "2.5 / 0.5 / 0.25 in the OOD lab (2.5: near-OOD FPR95 13-20 points worse)",
    )
    ood_loss: OodLoss = Field(
        "energy_logistic",
        description="energy_logistic: phi's logistic loss on "
        "the energy (DREAM-OOD); outlier_exposure: outliers' softmax to uniform (OE)",
    )
    phi_hidden: int = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)
    dataset: str = ""
    store: str | None = None
    outlier_datasets: list[str] = Field(default_factory=list)
    max_id_percentile: Annotated[float, Field(ge=0, le=100)] | Literal["auto"] | None = Field(
        "auto",
        description="keep only verified outliers: re-encoded at or below this ID percentile "
        "(oodsynth.decoding.verification); auto: DEFAULT_MAX_ID_PERCENTILE when every stored image is verified, else all; "
        "None: all",
    )
    min_id_percentile: float = Field(
        0.0,
        ge=0,
        le=100,
        description="with the verification filter, a band: also drop outliers re-encoded below this ID percentile "
        "(blobs, decoder artefacts); below max_id_percentile; 0: no lower bound",
    )
    max_margin: float | None = Field(
        None,
        ge=0,
        le=2,
        description="keep only verified outliers whose re-encoded top-1 minus top-2 anchor cosine is at most this "
        "(ambiguous between two ID classes); None: no margin filter",
    )
    stream_outliers: bool = Field(
        False,
        description="read webdataset exports as they stream (shuffled shards, then a shuffle buffer) instead of "
        "holding the set: for large remote sets; not seed-for-seed the in-memory run",
    )
    shuffle_buffer: int = Field(1000, ge=1, description="streamed outliers: samples held in the shuffle buffer")
    noise_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="with outlier images: this share of the outliers are smooth noise (4x4 uniform noise upsampled), "
        "added to the stored ones; 0.25 (with mixing_share 0.25) is the OOD lab's decoded recipe",
    )
    mixing_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="with outlier images: this share of the outliers are mixes of two ID training images of "
        "different classes (``mixing_kind``), added to the stored ones; 0: the stored outliers alone. 0.25 (with "
        "noise_share 0.25) is the OOD lab's decoded recipe (bench/results/ood_protocol/choose_defaults.md)",
    )
    mixing_kind: Literal["mixup", "cutmix"] = Field("cutmix", description="the mixing of ``mixing_share``")
    outlier_recipe: CheapRecipe | None = Field(
        None,
        description="outliers made without a generator and without a stored set, as the OOD lab's row of that "
        "name: smooth noise, cutmix or mixup of two ID images of different classes, or half noise and half "
        "cutmix (noise+cutmix); "
        "outlier_ratio of them per ID image; None: the stored outliers (outlier_datasets) or none",
    )
    outlier_ratio: float = Field(
        0.1, gt=0, le=10, description="with a recipe: outliers per ID training image (the OOD lab's 0.1)"
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
    redraw_density: Literal[DENSITY_KINDS] = Field("gaussian_full", description="density kind refitted for a redraw")  # type: ignore[valid-type]  # a Literal of a registry's keys, made at import; pydantic checks the values
    virtual_outliers: Literal[VIRTUAL_OUTLIERS] | None = Field(  # type: ignore[valid-type]  # a Literal of a registry's keys, made at import; pydantic checks the values
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

    @field_validator("outlier_recipe")
    @classmethod
    def _one_outlier_source(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("outlier_datasets"):
            raise ValueError("makes its own outliers: give it or stored outlier datasets, not both")
        return v

    @field_validator("mixing_share")
    @classmethod
    def _stored_outliers_left(cls, v: float, info: ValidationInfo) -> float:
        check_shares(info.data.get("noise_share", 0.0), v)
        return v
