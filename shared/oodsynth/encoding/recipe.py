"""One declaration of what every training run is made of: the model (arch, width), its input (image size,
normalisation), its steps (epochs, batch size, lr) and its seed.

The encoder's ``EncoderTrainConfig``, the OOD trainer's ``OODTrainConfig`` and the lab's ``LabSettings`` take these
fields from here, so a bound or a meaning is written once; each config sets only its own defaults (an encoder
trains 200 epochs, the lab's small detector 8). ``ModelRecipe`` is what the lab keys its cells on; ``TrainingRun``
adds what one run fixes besides (the seed, the dataset's normalisation). Torch-free, so the CLI can offer the
architectures as choices without loading torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field

EncoderArch = Literal["resnet10", "resnet18", "resnet34", "resnet152", "efficientnet_v2_s"]
ENCODER_ARCHS: tuple[EncoderArch, ...] = get_args(EncoderArch)

Width = Annotated[int, Field(ge=1, description="CIFAR ResNet base width (64 = standard)")]
ImageSize = Annotated[int, Field(ge=1, description="input height = width, in pixels")]
Epochs = Annotated[int, Field(ge=1)]
BatchSize = Annotated[int, Field(ge=1, description="ID images per step")]
LearningRate = Annotated[float, Field(gt=0, description="initial learning rate (SGD, cosine to 0)")]
Channels = tuple[float, float, float]

# The decoded recipe's outlier mix, declared once: the lab's defaults (LabSettings.noise_share and mixing_share)
# and what train-ood's help names for a run on stored outliers. A quarter each of smooth noise and cutmix won on the
# dev splits (bench/results/ood_protocol/choose_defaults.md). OODTrainConfig's own default stays 0 for both: a run
# on stored outliers gets them alone unless asked; without stored outliers train-ood trains the lab's recommended
# generator-free recipe instead (training.outlier_mix.RECOMMENDED_RECIPE).
RECIPE_NOISE_SHARE = 0.25
RECIPE_MIXING_SHARE = 0.25

R = TypeVar("R", bound="TrainingRun")


class ModelRecipe(BaseModel):
    """The model and its steps: arch, width, image size, epochs, batch size, lr (the trainer's defaults)."""

    model_config = ConfigDict(extra="forbid")

    arch: EncoderArch = "resnet18"
    width: Width = 64
    image_size: ImageSize = 32
    epochs: Epochs = 100
    batch_size: BatchSize = 128
    lr: LearningRate = 0.1

    def recipe(self) -> dict[str, Any]:
        """The ``ModelRecipe`` fields alone, as a run config takes them (``TrainingRun.from_recipe``)."""
        return {name: getattr(self, name) for name in ModelRecipe.model_fields}


class TrainingRun(ModelRecipe):
    """A recipe as one run trains it: plus the seed and the input normalisation (the dataset's mean and std)."""

    seed: int = 0
    mean: Channels = (0.5, 0.5, 0.5)
    std: Channels = (0.5, 0.5, 0.5)

    @classmethod
    def from_recipe(cls: type[R], recipe: ModelRecipe, **fields: Any) -> R:
        """This run config with ``recipe``'s model and steps, ``fields`` (seed, normalisation, the rest) over it."""
        return cls(**{**recipe.recipe(), **fields})
