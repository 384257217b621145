"""Reading named arrays out of an untrusted ``.npz``, each member judged before a byte of it is inflated.

``np.load`` is not safe on uploads: it serves an array stored under the bare
member name (``features``) as well as ``features.npy``, returns a member that
is not an ``.npy`` as its whole decompressed bytes, and allocates whatever
shape a header claims. A 6 MB zip can unpack to gigabytes. This reader picks
the one member per name that it will read (``name.npy`` or ``name``, refusing
both at once and duplicate entries), checks the zip directory's declared size
and the ``.npy`` header (shape, dtype, no objects) of exactly that member
against the cap, and only then reads it with ``np.lib.format.read_array``,
which allocates the checked shape and no more (``zipfile`` never inflates past
a member's declared size).
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from .errors import InputError, TooLarge

READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


class NpzError(InputError):
    """An ``.npz`` that cannot be read safely; ``field`` is the array's name, or ``file`` for the archive."""


def _header(member: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` header (ValueError when the member is not one)."""
    version = np.lib.format.read_magic(member)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read_header(member)  # the header only: no array data is read
    return shape, dtype


def _member(archive: zipfile.ZipFile, name: str, counts: Counter) -> zipfile.ZipInfo:
    """The one member ``np.load``'s ``data[name]`` would read: ``name`` itself or ``name.npy``, never both."""
    found = [m for m in (name, f"{name}.npy") if m in counts]
    if not found:
        raise NpzError(name, f"missing from the .npz (it has {sorted(counts)[:20]})")
    if len(found) > 1:
        raise NpzError(name, f"the .npz holds both {name!r} and {name + '.npy'!r}: which one is meant is ambiguous")
    if counts[found[0]] > 1:
        raise NpzError(name, f"the .npz holds {counts[found[0]]} entries named {found[0]!r}")
    return archive.getinfo(found[0])


def read_npz(
    source: str | Path | bytes | BinaryIO, names: Iterable[str], *, max_bytes: int, field: str = "file"
) -> dict[str, np.ndarray]:
    """The arrays ``names`` of an ``.npz``; ``NpzError`` (field = the array, or ``field`` for the archive) when a
    member is missing, ambiguous, not an ``.npy`` or holds objects; ``TooLarge`` (413, field ``field``) when the
    members together would take more than ``max_bytes`` once inflated, judged from the zip directory's sizes and
    the ``.npy`` headers' shapes and dtypes. Nothing is decompressed or allocated before every member has passed."""
    names = list(names)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        archive = zipfile.ZipFile(stream)
    except READ_ERRORS as exc:
        raise NpzError(field, f"not a readable .npz ({type(exc).__name__}: {exc})") from None
    with archive:
        counts = Counter(info.filename for info in archive.infolist())
        members = {name: _member(archive, name, counts) for name in names}
        declared_total = sum(info.file_size for info in members.values())
        sizes: dict[str, int] = {}
        if declared_total > max_bytes:  # the zip directory's sizes: nothing of any member is read
            name = max(members, key=lambda n: members[n].file_size)
            raise TooLarge(field, _too_large(max_bytes, declared_total, name, members[name].file_size))
        for name, info in members.items():
            try:
                with archive.open(info) as member:
                    shape, dtype = _header(member)
            except READ_ERRORS as exc:
                raise NpzError(name, f"is not a readable .npy array ({type(exc).__name__}: {exc})") from None
            if dtype.hasobject:
                raise NpzError(name, "holds Python objects; only numeric and string arrays are read")
            sizes[name] = math.prod(shape) * dtype.itemsize
            if sizes[name] > info.file_size:
                raise NpzError(name, f"its header claims {sizes[name]} bytes, more than the member holds")
        if sum(sizes.values()) > max_bytes:  # the .npy headers' shapes and dtypes: no array is allocated yet
            name = max(sizes, key=sizes.__getitem__)
            raise TooLarge(field, _too_large(max_bytes, sum(sizes.values()), name, sizes[name]))
        arrays = {}
        for name, info in members.items():
            try:
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
            except READ_ERRORS as exc:
                raise NpzError(name, f"is not a readable .npy array ({type(exc).__name__}: {exc})") from None
        return arrays


def _too_large(max_bytes: int, total: int, name: str, declared: int) -> str:
    return (
        f"the .npz's arrays would take {total} bytes once inflated, over the limit of {max_bytes} bytes "
        f"(settings OODSYNTH_MAX_BANK_BYTES); {name} alone declares {declared} bytes"
    )
