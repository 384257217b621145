"""Size checks on an uploaded ``.npz`` before anything is decompressed.

A 2 MB ``.npz`` can unpack to gigabytes, and a ``.npy`` header can claim a
shape that numpy tries to allocate whole. Both sizes are readable for free:
the zip directory declares each member's uncompressed size (and ``zipfile``
never inflates past it), and the ``.npy`` header, the first bytes of the
member, gives its shape and dtype. ``check_npz_size`` refuses the file when
either exceeds the cap, reading nothing but those headers.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import InputError


def _declared_nbytes(member: BinaryIO) -> int:
    """Bytes the array would take, from its ``.npy`` header (ValueError when it is not one)."""
    version = np.lib.format.read_magic(member)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read_header(member)  # the header only: no array data is read
    return math.prod(shape) * dtype.itemsize


def check_npz_size(source: str | Path | bytes, names: Iterable[str], max_bytes: int, *, field: str = "file") -> None:
    """Raise ``InputError`` when the members ``names`` of ``source`` would decompress to more than ``max_bytes``.

    Files that are not zips are left to the loader (which reports them); only sizes are judged here.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    with stream:
        try:
            archive = zipfile.ZipFile(stream)
        except zipfile.BadZipFile:
            return
        with archive:
            members = {info.filename: info for info in archive.infolist()}
            total = 0
            for name in names:
                info = members.get(f"{name}.npy")
                if info is None:
                    continue
                declared = info.file_size
                try:
                    with archive.open(info) as member:
                        declared = max(declared, _declared_nbytes(member))
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError):
                    pass  # not a readable .npy: the loader says so
                total += declared
                if total > max_bytes:
                    raise InputError(
                        f"{field}.{name}",
                        f"the bank would decompress to over {max_bytes} bytes (settings OODSYNTH_MAX_BANK_BYTES); "
                        f"{name} alone declares {declared} bytes",
                    )
