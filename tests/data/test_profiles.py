"""Offline profiles: the animals split, its OOD sets, and the numpy-only unpickler."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from oodsynth.data import (
    ANIMAL_WORDS,
    DataUnavailableError,
    load_dataset,
    load_numpy_pickle,
    profile_ood_sets,
)

pytest.importorskip("animal_mnist", reason="the animals profile needs `pip install --no-deps animal-mnist==0.4`")


def test_animals_profile_holds_three_animals_out():
    train, test, ood = (load_dataset("animals", s) for s in ("train", "test", "ood"))
    assert train.class_names == ["bear", "bird", "cat", "cow", "elephant", "giraffe", "zebra"]
    assert ood.class_names == ["dog", "horse", "sheep"]
    assert (len(train), len(test), len(ood)) == (4900, 2100, 3000)
    x, y = train.dataset[0]
    assert x.shape == (3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    # stratified: every ID class has exactly 700 train and 300 test images
    assert np.bincount(train.dataset.tensors[1].numpy()).tolist() == [700] * 7
    assert np.bincount(test.dataset.tensors[1].numpy()).tolist() == [300] * 7
    # the split is fixed
    again = load_dataset("animals", "train")
    assert torch.equal(again.dataset.tensors[0], train.dataset.tensors[0])
    assert load_dataset("animals", "test", image_size=28).dataset[0][0].shape == (3, 28, 28)


def test_ood_sets_of_both_profiles():
    animals = profile_ood_sets("animals")
    assert list(animals) == ["near:dog+horse+sheep", "far:digits", "far:noise", "far:inverted"]
    assert [len(d) for d in animals.values()] == [3000, 1797, 1000, 2100]
    assert [d.extra["ood_kind"] for d in animals.values()] == ["near", "far", "far", "far"]
    test = load_dataset("animals", "test")
    assert torch.allclose(animals["far:inverted"].dataset.tensors[0], 1 - test.dataset.tensors[0])
    digits = profile_ood_sets("digits")
    assert list(digits) == ["near:eight+nine", "far:animals", "far:noise", "far:inverted"]
    assert len(digits["far:animals"]) == 2000
    assert load_dataset("digits", "far-noise").dataset[0][1] == -1
    with pytest.raises(DataUnavailableError, match="split"):
        load_dataset("animals", "far-animals")


def test_numpy_pickle_round_trip_and_refusal(tmp_path):
    arr = np.arange(12, dtype=np.int64).reshape(3, 4)
    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as f:
        pickle.dump(arr, f)
    assert np.array_equal(load_numpy_pickle(good), arr)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(pickle.UnpicklingError, match=r"refused to unpickle (posix|os|nt)\.system"):
        load_numpy_pickle(evil)
    assert not (tmp_path / "pwned").exists()
    not_array = tmp_path / "list.pkl"
    not_array.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(pickle.UnpicklingError, match="expected a numpy array"):
        load_numpy_pickle(not_array)


def test_animal_words_match_the_silhouettes():
    """Label order check: giraffes are the tallest-narrowest silhouettes, elephants among the widest."""
    from oodsynth.data import OFFLINE_PROFILES

    x, y = OFFLINE_PROFILES["animals"].raw()
    ink = x > 127
    aspect = [ink[y == c].any(axis=1).sum(1).mean() / ink[y == c].any(axis=2).sum(1).mean() for c in range(10)]
    assert ANIMAL_WORDS[int(np.argmin(aspect))] == "giraffe"
