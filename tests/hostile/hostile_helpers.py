"""Helpers of the hostile suite: uploads of hand-built .npz files."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from tests.helpers.toy_banks import toy_bank


def post_fit(api, name="toy", data: bytes | None = None, **kw):
    data = toy_bank().to_bytes() if data is None else data
    return api.post("/fits", data={"name": name}, files={"file": ("bank.npz", data, "application/octet-stream")}, **kw)


def npz_of(members: dict[str, bytes | np.ndarray], *, compress: bool = True) -> bytes:
    """A zip whose members are written as given: arrays as .npy bytes, bytes as they are (any member name)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                member = io.BytesIO()
                np.save(member, value)
                value = member.getvalue()
            z.writestr(name, value)
    return buf.getvalue()


def bank_members(**overrides) -> dict[str, np.ndarray | bytes]:
    bank = toy_bank()
    members = {
        "features.npy": bank.features,
        "labels.npy": bank.labels,
        "anchors.npy": bank.anchors,
        "class_names.npy": bank.class_names,
    }
    members.update(overrides)
    return {k: v for k, v in members.items() if v is not None}


def first_error(r) -> dict:
    return r.json()["detail"][0]
