"""The ``datasets`` features of an export: the label as a ``ClassLabel``, every manifest and diagnostic column typed.

Written into the metadata file (the Parquet schema carries them, so ``load_dataset("imagefolder", data_dir=...)``
gives a ``label`` ClassLabel column) and into the card's ``dataset_info`` (what the hub reads).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..store.results import ImageRecord

if TYPE_CHECKING:
    import datasets


def class_names(records: list[ImageRecord]) -> list[str]:
    """Names by class index, 0..max; an index no record carries is named ``class_<i>``."""
    by_index = {r.class_index: r.class_name for r in records}
    return [by_index.get(i, f"class_{i}") for i in range(max(by_index, default=-1) + 1)]


def value_type(values: list[Any], if_empty: str = "string") -> datasets.Value:
    """One Arrow type for a column of one Python type (``manifest_columns`` made it so); ``if_empty`` if all None."""
    import datasets

    present = [v for v in values if v is not None]
    if not present:
        return datasets.Value(if_empty)
    if all(isinstance(v, bool) for v in present):
        return datasets.Value("bool")
    if all(isinstance(v, int) for v in present):
        return datasets.Value("int64")
    if all(isinstance(v, (int, float)) for v in present):
        return datasets.Value("float64")
    return datasets.Value("string")


def row_features(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Features of manifest rows: dict fields as structs (diagnostics all-None typed float64), the rest as values.

    A dict field with no key in any row has no Arrow struct type (Parquet refuses an empty struct): it is left out.
    """
    out: dict[str, Any] = {}
    for name, first in rows[0].items():
        if isinstance(first, dict):
            if first:
                empty = "float64" if name == "diagnostics" else "string"
                out[name] = {k: value_type([row[name][k] for row in rows], empty) for k in first}
        else:
            out[name] = value_type([row[name] for row in rows])
    return out


def label_features(
    names: list[str], columns: dict[str, Any], first: dict[str, Any], label: str = "label"
) -> datasets.Features:
    """``first`` (e.g. the image or its file name), then ``label`` a ClassLabel of ``names``, then ``columns``."""
    import datasets

    return datasets.Features({**first, label: datasets.ClassLabel(names=names), **columns})


def image_feature() -> datasets.Image:
    import datasets

    return datasets.Image()


def string_feature() -> datasets.Value:
    import datasets

    return datasets.Value("string")
