"""The train-ood use case called as the lab calls it: config assembly, store checks, user-facing field names."""

import pytest

from oodsynth.errors import InputError
from oodsynth.service.training import resolve_recipe, train_ood_run
from oodsynth.training.outlier_mix import CHEAP_RECIPES, RECOMMENDED_RECIPE
from tests.helpers.stores import write_outliers

TINY = dict(width=4, epochs=1, batch_size=64, ood_batch_size=8, lr=0.05, device="cpu", progress=False)


def test_errors_name_the_train_ood_inputs(tmp_path):
    with pytest.raises(InputError) as exc:
        train_ood_run(tmp_path / "r", store=tmp_path / "missing", outliers=["x"], **TINY)
    assert exc.value.field == "store" and "does not exist" in exc.value.message
    write_outliers(tmp_path / "store", "blobs", 1, ["zero"])
    with pytest.raises(InputError) as exc:  # the dataset layer says "datasets"; the user gave --outliers
        train_ood_run(tmp_path / "r", store=tmp_path / "store", outliers=["nope"], **TINY)
    assert exc.value.field == "outliers" and "blobs" in exc.value.message
    with pytest.raises(InputError) as exc:
        train_ood_run(tmp_path / "r", beta=-1.0, **TINY)
    assert exc.value.field == "beta"
    with pytest.raises(InputError) as exc:
        train_ood_run(tmp_path / "r", store=tmp_path / "store", outliers=["blobs"], max_id_percentile=10, **TINY)
    assert exc.value.field == "max_id_percentile" and "verification" in exc.value.message


@pytest.mark.slow  # trains a detector
def test_a_run_says_what_it_trained(tmp_path):
    write_outliers(tmp_path / "store", "blobs", 4, [str(i) for i in range(8)])
    result = train_ood_run(tmp_path / "r", store=str(tmp_path / "store"), outliers=["blobs"], **TINY)
    assert result.kind == "CE + 0.5 * L_ood on 1 outlier set(s)" and result.checkpoint.is_file()
    assert result.classifier.config.outlier_datasets == ["blobs"] and result.classifier.uses_outliers
    mixed = train_ood_run(
        tmp_path / "m", store=str(tmp_path / "store"), outliers=["blobs"], noise_share=0.25, mixing_share=0.25, **TINY
    )
    assert mixed.kind == (
        "CE + 0.5 * L_ood on 1 outlier set(s) + smooth noise (0.25 of the outliers) + cutmix mixes (0.25 of the outliers)"
    )
    assert mixed.classifier.history[-1]["ood"] != result.classifier.history[-1]["ood"]
    with pytest.raises(InputError) as exc:
        train_ood_run(
            tmp_path / "x", store=str(tmp_path / "store"), outliers=["blobs"], noise_share=0.5, mixing_share=0.5, **TINY
        )
    assert exc.value.field == "mixing_share"
    base = train_ood_run(tmp_path / "b", beta=0.0, **TINY)
    assert base.kind == "CE only" and not base.classifier.uses_outliers


@pytest.mark.parametrize(
    ("recipe", "other_sources", "beta", "expected"),
    [
        ("auto", False, 0.5, RECOMMENDED_RECIPE),  # nothing else gives outliers: the lab's recommended recipe
        ("auto", True, 0.5, None),  # stored, feature or virtual outliers, or a fine-tune: as they were
        ("auto", False, 0.0, None),  # beta 0 is the CE baseline
        ("none", False, 0.5, None),  # the bare run
        ("cutmix", False, 0.5, "cutmix"),
    ],
)
def test_train_ood_without_outliers_trains_the_recommended_recipe(recipe, other_sources, beta, expected):
    assert resolve_recipe(recipe, other_sources=other_sources, beta=beta) == expected


def test_the_recommended_recipe_is_a_cheap_recipe_the_lab_runs_as_a_row():
    from oodsynth.lab import DEFAULT_ROW, lab_rows

    assert RECOMMENDED_RECIPE is None or (RECOMMENDED_RECIPE in CHEAP_RECIPES and RECOMMENDED_RECIPE in lab_rows())
    assert RECOMMENDED_RECIPE in (DEFAULT_ROW, None)  # the product trains what the lab's default row trains
