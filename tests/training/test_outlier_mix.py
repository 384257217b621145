"""The outlier mix around stored outliers: smooth noise and ID mixes at their shares, held or streamed."""

import pytest
import torch
from torch.utils.data import IterableDataset, TensorDataset

from oodsynth.errors import InputError
from oodsynth.training.outlier_mix import SmoothNoiseDataset, cheap_recipe_outliers, smooth_noise, with_outlier_mix


def id_images(n_classes=4, per_class=10, size=8):
    """ID image i is filled with i + 1 (>= 1), so a mix of two is >= 1 too, unlike noise (< 1) or outliers (-1)."""
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = (torch.arange(len(labels), dtype=torch.float32) + 1).view(-1, 1, 1, 1).expand(-1, 3, size, size)
    return TensorDataset(images.contiguous(), labels)


class Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter((torch.full((3, 8, 8), -1.0), 7) for _ in range(self.n))


def kind_of(image: torch.Tensor) -> str:
    if image.min() == -1:
        return "stored"
    return "mix" if image.min() >= 1 else "noise"


def test_smooth_noise_is_the_same_read_at_once_or_one_by_one():
    batch = smooth_noise(6, 16, seed=3)
    assert batch.shape == (6, 3, 16, 16) and 0 <= batch.min() and batch.max() <= 1
    lazy = SmoothNoiseDataset(6, 16, seed=3)
    assert torch.equal(torch.stack([lazy[i][0] for i in range(6)]), batch) and lazy[0][1] == 0
    assert not torch.equal(smooth_noise(6, 16, seed=4), batch)


def test_a_held_set_gets_noise_and_mixes_at_their_shares():
    held = TensorDataset(torch.full((30, 3, 8, 8), -1.0), torch.full((30,), 7))
    assert with_outlier_mix(held, id_images(), image_size=8, seed=0) is held
    mixed = with_outlier_mix(held, id_images(), noise_share=0.25, mixing_share=0.25, image_size=8, seed=0)
    kinds = [kind_of(mixed[i][0]) for i in range(len(mixed))]
    assert len(mixed) == 60 and kinds.count("stored") == 30 and kinds.count("noise") == kinds.count("mix") == 15


def test_a_stream_gets_them_interleaved_at_their_shares():
    out = [
        kind_of(x)
        for x, _ in with_outlier_mix(Stream(40), id_images(), noise_share=0.25, mixing_share=0.25, image_size=8, seed=0)
    ]
    assert out.count("stored") == 40 and out.count("noise") == out.count("mix") == 20
    assert out[:4] == ["stored", "stored", "noise", "mix"]  # interleaved as they fall due, not appended


def test_shares_that_leave_no_stored_outlier_are_refused():
    with pytest.raises(InputError) as exc:
        with_outlier_mix(Stream(1), id_images(), noise_share=0.5, mixing_share=0.5, image_size=8, seed=0)
    assert exc.value.field == "mixing_share"


@pytest.mark.parametrize(
    ("recipe", "n", "expected"),
    [
        ("noise+cutmix", 11, ["noise"] * 5 + ["mix"] * 6),  # the lab's row: n // 2 noise, the rest cutmix
        ("noise", 4, ["noise"] * 4),
        ("cutmix", 3, ["mix"] * 3),
        ("mixup", 3, ["mix"] * 3),
    ],
)
def test_a_cheap_recipe_makes_the_lab_rows_outliers_without_a_stored_set(recipe, n, expected):
    made = cheap_recipe_outliers(recipe, id_images(), n, image_size=8, seed=0)
    assert [kind_of(made[i][0]) for i in range(len(made))] == expected
    assert all(made[i][1] == 0 for i in range(len(made)))


def test_a_cheap_recipe_refuses_an_unknown_name_and_an_empty_count():
    with pytest.raises(InputError) as err:
        cheap_recipe_outliers("blobs", id_images(), 4, image_size=8, seed=0)
    assert err.value.field == "recipe" and "noise+cutmix" in err.value.message
    with pytest.raises(InputError) as err:
        cheap_recipe_outliers("noise", id_images(), 0, image_size=8, seed=0)
    assert err.value.field == "outlier_ratio"
