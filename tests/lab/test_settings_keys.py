"""Lab cells are cached by a hash of their settings: these keys, measured before the training configs shared one
declaration (encoding.recipe), must never move, or every cached cell of a running benchmark is lost."""

import pytest
import torch
from torch.utils.data import TensorDataset

from oodsynth.data import ImageData
from oodsynth.lab import LabSettings, lab_rows
from oodsynth.lab.assets import LabAssets
from oodsynth.lab.cells import Cell, ood_config
from oodsynth.lab.settings import QUICK

# settings -> {row: key}; "" is the settings' own key, "_scratch" the pretrained detector's (key(frozenset()))
PINNED = {
    "default": ({}, "5b66fe3af0 04e5ec8f07 ce9d1dac04 f6360cacf3 b5051a6f83 1f3f8aff7c adbc891520 bb1549fe6b"),
    "quick": (QUICK, "fd50a68718 6197755f44 a8760b0db3 fbed90ef8b fae4d9d37d 25c3be093a 1db8f21a51 209245ead2"),
    "no_mix": (
        {"mixing_share": 0.0},
        "b513085b2b 04e5ec8f07 ce9d1dac04 f6360cacf3 74d2550fd2 1f3f8aff7c adbc891520 bb1549fe6b",
    ),
    "finetune": (
        {"finetune_epochs": 4, "finetune_lr": 0.02},
        "bfeeae2940 04e5ec8f07 4051bbcdec f6360cacf3 b2811a37a8 1f3f8aff7c df6af91ee4 8373f87a9e",
    ),
    "wide": (
        {"width": 16, "image_size": 32, "lr": 0.1, "arch": "resnet18"},
        "70f8d10801 4225a9d1c9 5c48884c82 a6f742d0d3 70c60fad9a b93b1eac1b e2ce17f3f2 68d9751438",
    ),
    "band": (
        {"min_id_percentile": 2.0, "max_margin": 0.3, "init_strength": 0.5},
        "39aae15c89 04e5ec8f07 ce9d1dac04 f6360cacf3 cf6b081402 1f3f8aff7c adbc891520 bb1549fe6b",
    ),
    "sampler": (
        {"sampler_params": {"boundary_crossing": {"select": 300}}},
        "3ccd16546c 04e5ec8f07 ce9d1dac04 f6360cacf3 02b9a2dd2b 1f3f8aff7c adbc891520 bb1549fe6b",
    ),
}
ROWS = ("ce", "density", "decoded:boundary_crossing+verified", "feature:knn_boundary", "inliers", "noise+cutmix")


def no_assets() -> LabAssets:
    raise AssertionError("a detector's config needs no generation side")


@pytest.mark.parametrize("name", list(PINNED))
def test_cell_keys_never_move(name):
    update, keys = PINNED[name]
    settings, rows = LabSettings(**update), lab_rows()
    got = [settings.key(), settings.key(frozenset())]
    got += [settings.key(rows[r].uses, rows[r].sampler) for r in ROWS]
    assert " ".join(got) == keys
    assert settings.key(rows["posthoc:energy"].uses) == settings.key(frozenset())  # post-hoc rows: the CE detector


def test_the_lab_builds_the_trainer_config_it_always_built(tmp_path):
    """Every field the detector trains with, as the lab's field-by-field copy gave them (measured before)."""
    images = TensorDataset(torch.zeros(300, 3, 16, 16), torch.zeros(300).long())
    train = ImageData(images, ["a"], 16, mean=(0.25, 0.5, 0.75), std=(0.2, 0.3, 0.4))
    cell = Cell("digits", 3, LabSettings(**QUICK), train, train, {}, tmp_path, tmp_path, no_assets)
    got = ood_config(cell, 0.5, n_outliers=2000, mixing_kind="mixup").model_dump()
    # 300 images at batch 128: 3 ID steps, so 2000 outliers take batches of 667; min_steps 0 keeps 2 epochs
    expected = {
        "arch": "resnet10",
        "width": 8,
        "epochs": 2,
        "batch_size": 128,
        "ood_batch_size": 667,
        "lr": 0.05,
        "beta": 0.5,
        "ood_loss": "energy_logistic",
        "seed": 3,
        "dataset": "digits",
        "image_size": 16,
        "mean": (0.25, 0.5, 0.75),
        "std": (0.2, 0.3, 0.4),
        "mixing_kind": "mixup",
        "noise_share": 0.0,
        "mixing_share": 0.0,
    }
    assert {k: got[k] for k in expected} == expected
