"""A torch ``Dataset`` over generated outliers in the result store, for the training job."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

from PIL import Image
from torch.utils.data import Dataset

from ..errors import InputError
from ..store.results import ImageRecord, ResultStore


class StoredOutliers(Dataset):
    """Images of one or more store datasets as ``(transform(image) or image, class_index)``.

    ``root`` is a store folder or an ``s3://bucket/prefix`` URL (as ``OODSYNTH_STORE``).
    ``max_id_percentile`` keeps only verified outliers (see ``verified_only``); ``"auto"`` keeps those at or below
    ``DEFAULT_MAX_ID_PERCENTILE`` when every image is verified, else all of them (``verification`` says which).
    The merged manifest is read once here, not per item; images are read lazily
    so the dataset is cheap to build and works with ``DataLoader`` workers.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        datasets: str | Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        storage_options: dict | None = None,
        max_id_percentile: float | Literal["auto"] | None = None,
    ):
        names = [datasets] if isinstance(datasets, str) else list(datasets)
        if not names:
            raise InputError("datasets", "give at least one dataset name")
        self.store = ResultStore(root, storage_options)
        available = set(self.store.datasets())
        unknown = [n for n in names if n not in available]
        if unknown:
            raise InputError("datasets", f"{unknown} not found in {self.store.url} (available: {sorted(available)})")
        self.datasets = names
        self.transform = transform
        self.records: list[ImageRecord] = [r for n in names for r in self.store.records(n)]
        self.verification = "all images (no verification filter)"
        if max_id_percentile == "auto":
            from ..decoding.verification import DEFAULT_MAX_ID_PERCENTILE

            if self.records and not unverified_count(self.records):
                max_id_percentile = DEFAULT_MAX_ID_PERCENTILE
            else:
                max_id_percentile = None
                self.verification = "all images: some carry no verification (decoded without an encoder)"
        self.threshold = max_id_percentile  # the ID-percentile filter applied, if any
        if max_id_percentile is not None:
            n = len(self.records)
            self.records = verified_only(self.records, max_id_percentile)
            self.verification = f"{len(self.records)} of {n} images verified at ID percentile <= {max_id_percentile:g}"
        self.targets = [r.class_index for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = self.store.open_image(record.path).convert("RGB")
        return (self.transform(image) if self.transform is not None else image), record.class_index


def _verified_key() -> str:
    from ..decoding.verification import MANIFEST_PREFIX

    return f"{MANIFEST_PREFIX}id_percentile"


def unverified_count(records: list[ImageRecord]) -> int:
    """How many records carry no re-encoded ID percentile (decoded without verification)."""
    key = _verified_key()
    return sum(key not in r.diagnostics for r in records)


def verified_only(records: list[ImageRecord], max_id_percentile: float) -> list[ImageRecord]:
    """The records whose re-encoded image sits at or below ``max_id_percentile`` (``oodsynth.decoding.verification``).

    Images decoded without verification carry no such field: that is an error, not a silent pass.
    """
    if not 0.0 <= max_id_percentile <= 100.0:
        raise InputError("max_id_percentile", f"must lie in [0, 100], got {max_id_percentile}")
    key = _verified_key()
    missing = unverified_count(records)
    if missing:
        raise InputError(
            "max_id_percentile", f"{missing} of {len(records)} images carry no {key} (decoded without verification)"
        )
    return [r for r in records if float(r.diagnostics[key]) <= max_id_percentile]
