"""The OOD-gain protocol: splits as input, the checked-in dev/test splits and seeds, --splits and --seeds."""

from __future__ import annotations

import importlib.util

import pytest

from oodsynth.data import DataUnavailableError, ProfileSplit, draw_splits, load_profile_split, profile_ood_sets
from oodsynth.errors import InputError
from oodsynth.lab.protocol import git_state, load_protocol, pick_splits
from tests.helpers.paths import REPO

PROTOCOL = REPO / "bench" / "protocol" / "splits.toml"


def _bench():
    spec = importlib.util.spec_from_file_location("ood_gain", REPO / "bench" / "ood_gain.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_a_split_is_an_input_not_a_module_edit():
    """Another holdout of digits loads through the same functions, with its own ID classes and near-OOD set."""
    split = ProfileSplit.parse("digits:one+five")
    assert split.holdout == (1, 5) and split.label == "digits:one+five"
    assert ProfileSplit.parse("digits:5+1") == split  # indices, any order
    train = split.load("train")
    assert train.class_names == ["zero", "two", "three", "four", "six", "seven", "eight", "nine"]
    assert train.extra["holdout"] == [1, 5]
    assert train.dataset.tensors[1].max().item() == 7
    near = split.ood_sets()
    assert list(near)[0] == "near:one+five" and len(near["near:one+five"]) == 182 + 182  # 182 ones, 182 fives
    # the default split is unchanged and still the default of every loader
    assert profile_ood_sets("digits").keys() == ProfileSplit.default("digits").ood_sets().keys()
    assert load_profile_split("digits", "ood", holdout=(1, 5)).class_names == ["one", "five"]
    with pytest.raises(DataUnavailableError, match="holdout"):
        ProfileSplit.parse("digits:one+ten")
    with pytest.raises(DataUnavailableError, match="holdout"):
        ProfileSplit("digits", tuple(range(9)))  # leaves one ID class


def test_the_checked_in_protocol_is_the_recorded_draw():
    """Each profile has >= 2 dev splits and >= 4 test splits; the test splits are what draw_splits gives with the
    file's draw seed (so nobody swapped one after seeing results); dev and test never overlap; seeds are fixed."""
    protocol = load_protocol(PROTOCOL)
    assert set(protocol.splits) == {"animals", "digits"}
    assert len(protocol.test_seeds) >= 3 and not set(protocol.test_seeds) & set(range(25))
    for profile, groups in protocol.splits.items():
        dev, test = groups["dev"], groups["test"]
        assert len(dev) >= 2 and len(test) >= 4
        assert dev[0].holdout == ProfileSplit.default(profile).holdout  # where the earlier defaults were tuned
        drawn = draw_splits(
            profile,
            len(test),
            n_holdout=protocol.n_holdout[profile],
            seed=protocol.draw_seed,
            exclude=[s.holdout for s in dev],
        )
        assert [s.holdout for s in test] == [s.holdout for s in drawn]
        assert not {s.holdout for s in dev} & {s.holdout for s in test}
        assert [s.name for s in test] == [f"test-{i}" for i in range(len(test))]
        # the confirm group: a second draw of four, its own seed, never a dev or a test split
        confirm = groups["confirm"]
        again = draw_splits(
            profile,
            4,
            n_holdout=protocol.n_holdout[profile],
            seed=protocol.confirm_draw_seed,
            exclude=[s.holdout for s in dev + test],
        )
        assert [s.holdout for s in confirm] == [s.holdout for s in again] and protocol.confirm_draw_seed != 2026
        assert [s.name for s in confirm] == [f"confirm-{i}" for i in range(4)]
        # the final group: a third draw of four, its own seed, never a dev, test or confirm split
        final = groups["final"]
        third = draw_splits(
            profile,
            4,
            n_holdout=protocol.n_holdout[profile],
            seed=protocol.final_draw_seed,
            exclude=[s.holdout for s in dev + test + confirm],
        )
        assert [s.holdout for s in final] == [s.holdout for s in third]
        assert protocol.final_draw_seed not in (protocol.draw_seed, protocol.confirm_draw_seed)
        assert [s.name for s in final] == [f"final-{i}" for i in range(4)]


def test_pick_splits_by_group_name_holdout_and_draw():
    protocol = load_protocol(PROTOCOL)
    test = pick_splits("test", ["animals", "digits"], protocol)
    assert len(test) == 8 and {s.name for s in test} == {f"test-{i}" for i in range(4)}
    one = pick_splits("test-2", ["digits"], protocol)
    assert one == [protocol.splits["digits"]["test"][2]]
    explicit = pick_splits("animals:dog+horse+sheep", ["digits"], protocol)  # names its profile: digits not used
    assert explicit[0].name == "dev-0" and explicit[0].profile == "animals"
    drawn = pick_splits("draw:3@5", ["animals"], protocol)
    listed = {s.holdout for g in protocol.splits["animals"].values() for s in g}
    assert len(drawn) == 3 and not {s.holdout for s in drawn} & listed
    assert drawn == pick_splits("draw:3@5", ["animals"], protocol)  # a fixed seed draws the same splits
    for bad in ("tset", "test-9", "draw:x", "animals:unicorn"):
        with pytest.raises(InputError):
            pick_splits(bad, ["animals"], protocol)


def test_seeds_are_seeds_and_counts_are_n_seeds():
    bench = _bench()
    assert bench.parse_seeds("71") == [71]
    assert bench.parse_seeds("70-72") == [70, 71, 72]
    assert bench.parse_seeds("0,2,5") == [0, 2, 5]
    assert bench.parse_seeds("5-7,15-16,20") == [5, 6, 7, 15, 16, 20]
    for bad in ("a-b", "3-", "5-2", "-1"):
        with pytest.raises(SystemExit, match="--seeds"):
            bench.parse_seeds(bad)
    assert bench.parse_settings(["outlier_ratio=1.0", "density=vmf", 'sampler_params={"x": {"y": 1}}']) == {
        "outlier_ratio": 1.0,
        "density": "vmf",
        "sampler_params": {"x": {"y": 1}},
    }
    known = ["ce", "noise", "decoded:a", "decoded:b", "vos"]
    assert bench.pick_rows("vos,decoded:*,ce", known) == ["vos", "decoded:a", "decoded:b", "ce"]  # the order given
    with pytest.raises(SystemExit, match="match no row"):
        bench.pick_rows("nope", known)
    with pytest.raises(SystemExit, match="not both"):
        bench.main(["--seeds", "1", "--n-seeds", "2", "--out", "/nonexistent"])


def test_git_state_names_the_commit():
    state = git_state(REPO)
    assert state["commit"] is None or len(state["commit"]) == 40
