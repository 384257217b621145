"""Exporters of a result-store dataset to formats other tools read: ``EXPORTERS[name]``, one module per format.

Contract in ``base.py`` (``Exporter``: ``add`` each image, ``finish`` with the dataset card); imports ``store``,
``errors`` and leaves (fsspec for folders and ``s3://`` prefixes alike), never torch.
"""

from __future__ import annotations

from .base import DatasetCard, Exporter, Output, manifest_columns
from .imagefolder import ImageFolderExporter
from .webdataset import WebDatasetExporter

EXPORTERS: dict[str, type[Exporter]] = {cls.format: cls for cls in (ImageFolderExporter, WebDatasetExporter)}

__all__ = ["EXPORTERS", "DatasetCard", "Exporter", "Output", "manifest_columns"]
