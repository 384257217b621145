"""The options of the training commands (``cli.training``), each declared once with its help and, where the
values are a fixed set, its choices: a value outside them is the one-line ``error: <option>: ...`` of any bad
input, at parse time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import typer

from ..densities import DENSITY_KINDS
from ..encoding.recipe import ENCODER_ARCHS, RECIPE_MIXING_SHARE, RECIPE_NOISE_SHARE
from ..errors import InputError

# Choices whose registries load torch (the CLI starts without it); tests/cli/test_training_options.py holds each
# equal to its registry.
OOD_LOSS_CHOICES = ("energy_logistic", "outlier_exposure")  # training.ood_config.OOD_LOSSES
MIXING_KIND_CHOICES = ("mixup", "cutmix")  # training.mixing.MIXING_KINDS
VIRTUAL_CHOICES = ("vos", "npos")  # training.virtual_outliers.VIRTUAL_OUTLIERS
RECIPE_CHOICES = ("noise", "cutmix", "mixup", "noise+cutmix")  # training.outlier_mix.CHEAP_RECIPES


def _listed(choices: Sequence[str]) -> str:
    """``'a', 'b' or 'c'``: pydantic's wording for a value outside a Literal."""
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _one_of(choices: Sequence[str]) -> Callable[..., str | None]:
    """A parse-time check: a value outside ``choices`` is the one-line ``error: <option>: ...`` of any bad input."""

    def check(param: typer.CallbackParam, value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise InputError(param.name, f"Input should be {_listed(choices)}, got {value!r}")
        return value

    return check


def choice(default: str | None, choices: Sequence[str], help: str, *decls: str) -> Any:
    """An option that admits only ``choices``, listed in its help."""
    return typer.Option(default, *decls, help=f"{help} One of: {', '.join(choices)}.", callback=_one_of(choices))


ARCH = choice("resnet18", ENCODER_ARCHS, "Backbone (CIFAR ResNets by base width; the others torchvision's).")
DATASET = typer.Option(
    "digits",
    help="ID dataset: an offline profile (digits, animals), cifar10, cifar100, imagefolder:<path> or a folder.",
)
DATA_ROOT = typer.Option(None, help="Where CIFAR lives or is downloaded to (offline profiles need none).")
DEVICE = typer.Option(None, help="torch device (cpu, cuda, cuda:1); auto when left out.")
SEED = typer.Option(0, help="Seeds the weights, the batches and every drawn outlier.")

# train-ood's options, one declaration each (the command's signature then reads one line an option)
OOD_OPTIONS = {
    "out": typer.Option(..., "--out", help="Run folder; the checkpoint is OUT/ood.pt."),
    "store": typer.Option(None, help="Result store folder or s3://bucket/prefix (default: settings OODSYNTH_STORE)."),
    "outliers": typer.Option(
        None,
        "--outliers",
        help="Outliers (repeatable): a store dataset name, or an `oodsynth export` of one (its folder or "
        "s3:// prefix, imagefolder or webdataset, or .tar shard URLs); exports need no store or Redis.",
    ),
    "max_id_percentile": typer.Option(
        None,
        help="Keep only verified outliers: images whose re-encoded feature sits at or below this ID percentile "
        "(manifest field verified_id_percentile). Default: 10 (measured) when every image is verified, else all.",
    ),
    "min_id_percentile": typer.Option(
        0.0,
        help="With --max-id-percentile, a band: also drop verified outliers below this ID percentile (the "
        "decodings that re-encode as most OOD: blobs and decoder artefacts). Must lie below the maximum; "
        "0: no lower bound.",
    ),
    "max_margin": typer.Option(
        None,
        help="Keep only verified outliers that are ambiguous between two ID classes: re-encoded top-1 minus "
        "top-2 anchor cosine (manifest field verified_margin, 0..2) at most this. Default: no margin filter.",
    ),
    "all_outliers": typer.Option(False, "--all-outliers", help="Use every stored outlier, verified or not."),
    "stream": typer.Option(
        False,
        "--stream",
        help="Read webdataset exports in --outliers as they stream (shuffled shards, then a shuffle buffer) "
        "instead of holding them in memory: for large remote sets. Not seed-for-seed the in-memory run.",
    ),
    "shuffle_buffer": typer.Option(1000, help="With --stream: samples held in the shuffle buffer."),
    "noise_share": typer.Option(
        0.0, help="With --outliers: this share of the outliers are smooth noise (blobs), added to the given ones."
    ),
    "mixing_share": typer.Option(
        0.0,
        help="With --outliers: this share of the outliers are mixes of two ID images of different classes "
        f"(--mixing-kind), added to the given ones. {RECIPE_NOISE_SHARE:g} of noise and {RECIPE_MIXING_SHARE:g} of "
        "mixes (with `evaluate --score knn --param knn.k=1`) is the OOD lab's decoded recipe; 0: the given "
        "outliers alone.",
    ),
    "mixing_kind": choice("cutmix", MIXING_KIND_CHOICES, "The mixing of --mixing-share."),
    "recipe": choice(
        "auto",
        ("auto", "none", *RECIPE_CHOICES),
        "Outliers made without a generator or a store, as the OOD lab's row of that name: smooth noise, cutmix or "
        "mixup of two ID images of different classes, or half noise and half cutmix (noise+cutmix); --outlier-ratio "
        "of them per ID image. auto: the OOD lab's recommended recipe when no other outliers are given (and beta > 0), "
        "none: the bare CE run. Not with --outliers.",
    ),
    "outlier_ratio": typer.Option(0.1, help="With --recipe: outliers per ID training image (the OOD lab's 0.1)."),
    "feature_outliers": typer.Option(
        None,
        "--feature-outliers",
        help="SAMPLE_ID|FILE.npz: sampled vectors fed straight to the head (no decoding); needs --init-encoder.",
    ),
    "init_encoder": typer.Option(
        None, help="Text-aligned encoder run folder to start from (768-d feature + anchor head)."
    ),
    "init_classifier": typer.Option(
        None,
        help="train-ood run folder (typically CE only, --beta 0) to fine-tune from, Outlier Exposure's protocol: "
        "--epochs more epochs at --lr; its architecture replaces --arch and --width.",
    ),
    "redraw_every": typer.Option(
        0, help="With --feature-outliers: redraw them from the current features every N epochs (0 = never)."
    ),
    "redraw_density": choice("gaussian_full", DENSITY_KINDS, "Density kind refitted for a redraw."),
    "virtual_outliers": choice(
        None,
        VIRTUAL_CHOICES,
        "Also draw --ood-batch-size outliers per step from the penultimate features in training (VOS: "
        "low-likelihood samples of class Gaussians; NPOS: k-NN boundary perturbations).",
        "--virtual-outliers",
    ),
    "virtual_param": typer.Option(
        None,
        "--virtual-param",
        help="NAME=VALUE (repeatable): a parameter of the --virtual-outliers sampler, e.g. queue_size=200, warmup=0.",
    ),
    "beta": typer.Option(
        0.5, help="Weight of L_ood; 0 or no --outliers = CE-only baseline (0.5: measured best in the OOD lab)."
    ),
    "ood_loss": choice(
        "energy_logistic",
        OOD_LOSS_CHOICES,
        "L_ood: energy_logistic (phi on the energy, DREAM-OOD) or outlier_exposure (outliers' softmax to uniform, OE).",
    ),
    "width": typer.Option(64, help="CIFAR ResNet base width (64 = standard)."),
    "epochs": typer.Option(100, help="Passes over the ID training set."),
    "batch_size": typer.Option(128, help="ID images per step."),
    "ood_batch_size": typer.Option(128, help="Outlier images per step."),
    "lr": typer.Option(0.1, help="Initial learning rate (SGD with Nesterov momentum, cosine to 0)."),
    "weight_decay": typer.Option(5e-4, help="SGD weight decay."),
    "image_size": typer.Option(None, help="Input size (default: the dataset's; digits 16)."),
    "augment": typer.Option(True, help="Random crop/flip of the ID images (CIFAR and folders)."),
    "resume": typer.Option(False, help="Continue from OUT/ood.pt."),
}
