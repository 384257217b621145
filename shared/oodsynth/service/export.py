"""The ``export`` use case: choose a stored dataset's images and write them in a format other tools read.

Filters: ``classes`` (names), ``max_id_percentile`` (verified images at or below it; ``verified_only`` uses the
measured default). Images are copied as stored, in the store's manifest order (so that training on the export
repeats training on the store seed for seed), with a progress bar.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, Unavailable


@dataclass
class ExportResult:
    out: str
    format: str
    n_images: int
    per_class: dict[str, int]
    files: list[str]


def select_records(store, dataset: str, *, classes=None, verified_only=False, max_id_percentile=None):
    """The records to export and a phrase saying how they were chosen (for the card)."""
    available = store.datasets()
    if dataset not in available:
        raise InputError("dataset", f"{dataset!r} not found in {store.url} (available: {sorted(available)})")
    records = store.records(dataset)
    chosen = ["all stored images"]
    if classes:
        known = {r.class_name for r in records}
        for i, name in enumerate(classes):
            if name not in known:
                raise InputError(f"classes[{i}]", f"no class {name!r} in {dataset} (classes: {sorted(known)})")
        records = [r for r in records if r.class_name in set(classes)]
        chosen = [f"classes {', '.join(classes)}"]
    if verified_only and max_id_percentile is None:
        from ..decoding.verification import DEFAULT_MAX_ID_PERCENTILE

        max_id_percentile = DEFAULT_MAX_ID_PERCENTILE
    if max_id_percentile is not None:
        from ..training.outlier_selection import verified_only as keep_verified  # loads torch: only when filtering

        n = len(records)
        records = keep_verified(records, max_id_percentile)
        chosen.append(f"{len(records)} of {n} verified at ID percentile <= {max_id_percentile:g}")
    if not records:
        raise InputError("dataset", f"no image of {dataset} matches ({'; '.join(chosen)})")
    return records, "; ".join(chosen)


# What each format imports beyond the core: the card and the typed columns for all, the tar writer for shards.
EXPORT_LIBRARIES = ("huggingface_hub", "datasets", "pyarrow")
FORMAT_LIBRARIES = {"webdataset": ("webdataset",)}


def require_export_libraries(format: str) -> None:
    """Say which package is missing before any file is written, not halfway through the export."""
    from importlib import import_module

    for name in (*EXPORT_LIBRARIES, *FORMAT_LIBRARIES.get(format, ())):
        try:
            import_module(name)
        except ImportError:
            raise Unavailable("format", f"exporting needs the {name} package: pip install 'oodsynth[export]'") from None


def export_dataset(
    dataset: str,
    out: str | Path,
    *,
    format: str = "imagefolder",
    store: str | Path | None = None,
    classes: list[str] | None = None,
    verified_only: bool = False,
    max_id_percentile: float | None = None,
    shard_size: int | None = None,
    id_dataset: str | None = None,
    encoder: str | None = None,
    license: str | None = None,
    openood_label: str = "ood",
    storage_options: dict | None = None,
    progress: bool = True,
) -> ExportResult:
    """Export ``dataset`` of ``store`` (default: the settings' ``OODSYNTH_STORE``) to ``out`` in ``format``.

    ``format``: ``imagefolder`` (Hugging Face ``datasets``, torchvision), ``webdataset`` (tar shards of
    ``shard_size``) or ``openood`` (an OpenOOD image list; ``openood_label`` "ood" writes -1, "class" the class).
    """
    from collections import Counter

    from tqdm.auto import tqdm

    from ..config import get_settings, parse_store_setting
    from ..export import EXPORTERS, DatasetCard
    from ..export.features import class_names
    from ..export.openood import LABELS as OPENOOD_LABELS
    from ..store.results import ResultStore

    if format not in EXPORTERS:
        raise InputError("format", f"unknown format {format!r}; choose from {', '.join(EXPORTERS)}")
    require_export_libraries(format)
    if shard_size is not None and format != "webdataset":
        raise InputError("shard_size", "only the webdataset format has shards")
    if openood_label != "ood" and format != "openood":
        raise InputError("openood_label", "only the openood format has image-list labels")
    if openood_label not in OPENOOD_LABELS:
        raise InputError("openood_label", f"unknown {openood_label!r}; choose from {', '.join(OPENOOD_LABELS)}")
    root = parse_store_setting(str(store)) if store else get_settings().store
    if isinstance(root, Path) and not root.is_dir():
        raise InputError("store", f"result store {root} does not exist")
    source = ResultStore(root, storage_options)
    records, selection = select_records(
        source, dataset, classes=classes, verified_only=verified_only, max_id_percentile=max_id_percentile
    )
    options: dict = {}
    if format == "webdataset":
        options = {"dataset": dataset, **({"shard_size": shard_size} if shard_size is not None else {})}
    elif format == "openood":
        options = {"label": openood_label}
    exporter = EXPORTERS[format](out, storage_options, **options)
    for record in tqdm(records, desc=f"export {dataset}", unit="image", disable=not progress, leave=False):
        exporter.add(record, source.read_bytes(record.path))
    card = DatasetCard(
        dataset,
        source.url,
        records,
        format,
        id_dataset=id_dataset,
        encoder=encoder,
        license=license,
        selection=selection,
        layout=exporter.layout,
        class_names=class_names(source.records(dataset))
        if classes or verified_only or max_id_percentile is not None
        else None,
    )
    files = exporter.finish(card)
    per_class = dict(Counter(r.class_name for r in records))
    return ExportResult(exporter.output.url, format, len(records), per_class, files)
