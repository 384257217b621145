"""Uploads: zip bombs under any member name, ambiguous or foreign members, names inside a bank."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hostile_helpers import bank_members, first_error, npz_of, post_fit

from tests.helpers.toy_banks import toy_bank

BOMB = np.zeros((2**19, 16), np.float32)  # 32 MiB of zeros: a few dozen KB compressed, 256x the 128 KiB cap


def _peak_mib(fn):
    """Peak bytes numpy and Python allocated while ``fn`` ran (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("member", ["features", "features.npy"])
def test_zip_bomb_under_any_member_name_is_refused_before_inflating(api, member):
    """np.load serves the bare member name 'features' too; the size check must judge that member, not only
    'features.npy' (a 6 MB upload once took the API to 7.4 GB)."""
    data = npz_of(bank_members(**{"features.npy": None, member: BOMB}))
    assert len(data) < 200 * 1024
    r, peak = _peak_mib(lambda: post_fit(api, data=data))
    assert r.status_code == 413 and first_error(r)["loc"] == ["body", "file"], r.text
    assert "OODSYNTH_MAX_BANK_BYTES" in first_error(r)["msg"] and "features" in first_error(r)["msg"]
    assert peak < 8, f"{peak:.1f} MiB allocated to refuse a bomb"


def test_a_member_that_is_not_an_npy_is_refused_not_read_whole(api):
    """np.load returns a non-.npy member as its whole inflated bytes: a bare 'features' of raw zeros."""
    data = npz_of(bank_members(**{"features.npy": None, "features": b"\0" * 100_000}))
    r = post_fit(api, data=data)
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "file", "features"], r.text
    assert "not a readable .npy" in first_error(r)["msg"]


def test_both_member_spellings_at_once_are_ambiguous(api):
    bank = toy_bank()
    data = npz_of(bank_members(features=bank.features))
    r = post_fit(api, data=data)
    assert r.status_code == 422 and "ambiguous" in first_error(r)["msg"], r.text


def test_a_header_claiming_more_than_the_member_holds_is_refused(api):
    """A small member whose .npy header claims a huge shape: numpy would allocate the shape first."""
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 768)})
    data = npz_of(bank_members(**{"features.npy": header.getvalue() + b"\0" * 64}))
    r, peak = _peak_mib(lambda: post_fit(api, data=data))
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "file", "features"], r.text
    assert peak < 8


def test_object_arrays_are_refused(api):
    import io

    member = io.BytesIO()
    np.save(member, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    data = npz_of(bank_members(**{"class_names.npy": member.getvalue()}))
    r = post_fit(api, data=data)
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "file", "class_names"], r.text


@pytest.mark.parametrize(
    "bad",
    ["x" * 5000, "../../..", "a/b", "．．", "class\nname", "\u202eevil", "a\u2215b"],
)
def test_class_names_inside_a_bank_follow_the_naming_rule_at_upload(api, bad):
    """A 5,000-character class or '../../..' used to pass /fits and /generate and fail in the worker."""
    names = np.array(["fine", bad, "also_fine"])
    r = post_fit(api, data=npz_of(bank_members(**{"class_names.npy": names})))
    assert r.status_code == 422, r.text
    assert first_error(r)["loc"] == ["body", "file", "class_names", 1], r.text
    assert api.get("/fits").json() == {"fits": []}


def test_duplicate_class_names_are_refused(api):
    names = np.array(["same", "same", "other"])
    r = post_fit(api, data=npz_of(bank_members(**{"class_names.npy": names})))
    assert r.status_code == 422 and first_error(r)["loc"] == ["body", "file", "class_names"], r.text
