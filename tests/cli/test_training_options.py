"""The training commands' options: every one has help, the fixed sets are choices equal to their registries, a
value outside them is one line naming the option, and train-ood hands train_ood_run what it always did."""

from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from oodsynth.cli import app
from oodsynth.cli.training import _train_ood_arguments
from oodsynth.cli.training_options import MIXING_KIND_CHOICES, OOD_LOSS_CHOICES, RECIPE_CHOICES, VIRTUAL_CHOICES
from oodsynth.errors import InputError

COMMANDS = ("train-encoder", "features", "train-ood", "evaluate")


def test_the_torch_free_choices_equal_their_registries():
    from oodsynth.training.mixing import MIXING_KINDS
    from oodsynth.training.ood_config import OOD_LOSSES
    from oodsynth.training.outlier_mix import CHEAP_RECIPES
    from oodsynth.training.virtual_outliers import VIRTUAL_OUTLIERS

    assert (OOD_LOSS_CHOICES, MIXING_KIND_CHOICES, VIRTUAL_CHOICES) == (OOD_LOSSES, MIXING_KINDS, VIRTUAL_OUTLIERS)
    assert RECIPE_CHOICES == tuple(CHEAP_RECIPES)


def options(command: str) -> dict:
    """The command's options by name (typer's vendored click: read by duck type, not by class)."""
    params = get_command(app).commands[command].params  # type: ignore[attr-defined]  # a group's commands
    return {p.name: p for p in params if p.param_type_name == "option"}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help(name):
    opts = options(name)
    assert len(opts) >= 6
    assert [n for n, p in opts.items() if not (p.help or "").strip()] == []


def test_help_lists_the_choices_and_a_wrong_one_is_one_line():
    opts = options("train-ood")
    for name, listed in (
        ("arch", "resnet10, resnet18, resnet34, resnet152, efficientnet_v2_s"),
        ("mixing_kind", "mixup, cutmix"),
        ("virtual_outliers", "vos, npos"),
        ("ood_loss", "energy_logistic, outlier_exposure"),
        ("redraw_density", "vmf, gaussian_isotropic, gaussian_diagonal, gaussian_full"),
    ):
        assert opts[name].help.endswith(f" One of: {listed}."), name
    assert "0.25 of noise and 0.25 of mixes" in opts["mixing_share"].help  # the recipe's shares, declared once
    for command, option, value in (
        ("train-ood", "--mixing-kind", "blend"),
        ("train-ood", "--redraw-density", "kde"),
        ("train-ood", "--arch", "vgg"),
        ("features", "--split", "val"),
    ):
        res = CliRunner().invoke(app, [command, option, value, "--out", "x"])
        lines = res.output.strip().splitlines()
        field = option.lstrip("-").replace("-", "_")
        assert res.exit_code == 2 and len(lines) == 1, res.output
        assert lines[0].startswith(f"error: {field}: Input should be ") and f"got {value!r}" in lines[0]


def test_train_ood_hands_the_filter_and_the_renamed_options_on():
    base = {"min_id_percentile": 0.0, "max_margin": None, "stream": True, "virtual_param": ["k=3"], "seed": 4}
    base["recipe"] = "noise"
    got = _train_ood_arguments({**base, "all_outliers": False, "max_id_percentile": None})
    assert got == {"min_id_percentile": 0.0, "max_margin": None, "seed": 4, "max_id_percentile": "auto"} | {
        "stream_outliers": True,
        "virtual_params": ["k=3"],
        "outlier_recipe": "noise",
    }
    assert _train_ood_arguments({**base, "all_outliers": True, "max_id_percentile": None})["max_id_percentile"] is None
    assert _train_ood_arguments({**base, "all_outliers": False, "max_id_percentile": 7.5})["max_id_percentile"] == 7.5
    with pytest.raises(InputError) as exc:
        _train_ood_arguments({**base, "all_outliers": True, "max_id_percentile": None, "max_margin": 0.2})
    assert exc.value.field == "all_outliers"
