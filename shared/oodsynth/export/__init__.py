"""Exporters of a result-store dataset to formats other tools read: ``EXPORTERS[name]``, one module per format.

Contract in ``base.py`` (``Exporter``: ``add`` each image, ``finish`` with the dataset card of ``card.py``, built
with huggingface_hub); ``features.py`` types the columns with ``datasets``, ``portable.py`` keeps this machine's
paths out. Imports ``store``, ``errors`` and leaves (fsspec for folders and ``s3://`` prefixes alike), never torch.
"""

from __future__ import annotations

from .base import Exporter, Output, manifest_columns
from .card import DatasetCard
from .imagefolder import ImageFolderExporter
from .openood import OpenOODExporter
from .webdataset import WebDatasetExporter

EXPORTERS: dict[str, type[Exporter]] = {
    cls.format: cls for cls in (ImageFolderExporter, WebDatasetExporter, OpenOODExporter)
}
FORMATS = tuple(EXPORTERS)

__all__ = ["EXPORTERS", "FORMATS", "DatasetCard", "Exporter", "Output", "manifest_columns"]
