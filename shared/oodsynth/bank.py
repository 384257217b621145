"""Feature bank: ID features, labels, class anchors T(y) and class names in one ``.npz``.

The bank is the contract between the encoder (which writes it) and the
densities/samplers (which read it), so it is validated on every load and save
with errors that name the offending field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import InputError
from .names import normalize_name, validate_name
from .npz import NpzError, read_npz

REQUIRED_FIELDS = ("features", "labels", "anchors", "class_names")


class BankError(InputError):
    """A feature bank is malformed; ``field`` names the offending array (or ``file``)."""


@dataclass
class FeatureBank:
    features: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # int64 (N,)
    anchors: np.ndarray  # float32 (C, D), the token embeddings T(y)
    class_names: np.ndarray  # str (C,)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.anchors.shape[0])

    def class_features(self, c: int) -> np.ndarray:
        return self.features[self.labels == c]

    def validate(self, *, min_per_class: int = 2) -> FeatureBank:
        f, y, a, names = self.features, self.labels, self.anchors, self.class_names
        if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
            raise BankError("features", f"expected a non-empty 2-D array (N, D), got shape {f.shape}")
        if not np.issubdtype(f.dtype, np.floating):
            raise BankError("features", f"expected float32, got {f.dtype}")
        if not np.isfinite(f).all():
            raise BankError("features", f"{int((~np.isfinite(f)).any(axis=1).sum())} rows contain NaN or inf")
        if y.ndim != 1 or y.shape[0] != f.shape[0]:
            raise BankError("labels", f"expected shape ({f.shape[0]},) to match features, got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise BankError("labels", f"expected integers, got {y.dtype}")
        if a.ndim != 2 or a.shape[0] == 0:
            raise BankError("anchors", f"expected a non-empty 2-D array (C, D), got shape {a.shape}")
        if a.shape[1] != f.shape[1]:
            raise BankError("anchors", f"dimension {a.shape[1]} does not match features dimension {f.shape[1]}")
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
            raise BankError("anchors", "expected finite floats")
        _check_norms("features", f)
        norms = _check_norms("anchors", a)
        if np.any(norms == 0):
            raise BankError("anchors", "an anchor has zero norm")
        if names.ndim != 1 or names.shape[0] != a.shape[0]:
            raise BankError("class_names", f"expected {a.shape[0]} names (one per anchor), got shape {names.shape}")
        for i, name in enumerate(names.tolist()):  # each becomes a folder in the store and a key in requests
            try:
                validate_name(f"class_names[{i}]", str(name))
            except InputError as exc:
                raise BankError(exc.field, exc.message) from None
        if len(set(names.tolist())) != names.shape[0]:
            raise BankError("class_names", "class names must be unique (each names one folder and one class)")
        if y.min() < 0 or y.max() >= a.shape[0]:
            bad = int(y[(y < 0) | (y >= a.shape[0])][0])
            raise BankError("labels", f"label {bad} is out of range [0, {a.shape[0]})")
        counts = np.bincount(y, minlength=a.shape[0])
        few = np.flatnonzero(counts < min_per_class)
        if few.size:
            shown = ", ".join(f"{names[c]!s}={counts[c]}" for c in few[:5])
            raise BankError("labels", f"{few.size} classes have fewer than {min_per_class} points ({shown})")
        return self

    @classmethod
    def from_arrays(cls, features, labels, anchors, class_names=None, *, min_per_class: int = 2) -> FeatureBank:
        anchors = np.asarray(anchors)
        if class_names is None:
            class_names = [f"class_{i}" for i in range(len(anchors))]
        bank = cls(
            features=np.asarray(features),
            labels=np.asarray(labels),
            anchors=anchors,
            class_names=_normalized_names(class_names),
        )
        bank.validate(min_per_class=min_per_class)
        bank.features = bank.features.astype(np.float32, copy=False)
        bank.anchors = bank.anchors.astype(np.float32, copy=False)
        bank.labels = bank.labels.astype(np.int64, copy=False)
        return bank

    def save(self, path: str | Path | BinaryIO) -> None:
        self.validate(min_per_class=1)
        np.savez(
            path,
            features=self.features.astype(np.float32),
            labels=self.labels.astype(np.int64),
            anchors=self.anchors.astype(np.float32),
            class_names=self.class_names.astype(str),
        )

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.save(buf)
        return buf.getvalue()


# Largest row norm of features and anchors: finite float32 rows (3e38) still overflow once squared or summed
# (the fit and /sample then give NaN or null vectors); text-encoder rows have norms near 1.
MAX_ROW_NORM = 1e6


def _check_norms(field: str, rows: np.ndarray) -> np.ndarray:
    """Row norms in float64 (no overflow), refused past ``MAX_ROW_NORM``."""
    norms = np.linalg.norm(rows.astype(np.float64, copy=False), axis=1)
    big = np.flatnonzero(~(norms <= MAX_ROW_NORM))
    if big.size:
        raise BankError(field, f"row {int(big[0])} has norm {norms[big[0]]:.3g}, above {MAX_ROW_NORM:g}")
    return norms


def _normalized_names(class_names) -> np.ndarray:
    """Class names as a str array in NFC (``names.normalize_name``); other shapes are left for ``validate``."""
    names = np.asarray(class_names, dtype=str)
    return np.asarray([normalize_name(n) for n in names.tolist()], dtype=str) if names.ndim == 1 else names


def load_bank(
    source: str | Path | bytes | BinaryIO, *, min_per_class: int = 2, max_bytes: int | None = None
) -> FeatureBank:
    """Load and validate a bank from a path, raw bytes or a file object.

    The arrays are read by ``oodsynth.npz.read_npz``: every member that is read is checked (size, header,
    no objects) before it is inflated, up to ``max_bytes`` together (default: settings ``max_bank_bytes``).
    """
    from .config import get_settings

    cap = max_bytes if max_bytes is not None else get_settings().max_bank_bytes
    if isinstance(source, (str, Path)):
        try:
            with open(source, "rb") as f:
                return load_bank(f, min_per_class=min_per_class, max_bytes=cap)
        except OSError as exc:
            raise BankError("file", f"cannot read the bank file ({exc.strerror or exc})") from None
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    head = source.read(6)
    source.seek(0)
    if head == b"\x93NUMPY":
        raise BankError(
            "file", "expected a .npz with features, labels, anchors, class_names; got a single array (.npy)"
        )
    try:
        arrays = read_npz(source, REQUIRED_FIELDS, max_bytes=cap)
    except NpzError as exc:
        raise BankError(exc.field, exc.message) from None
    return FeatureBank.from_arrays(**arrays, min_per_class=min_per_class)
