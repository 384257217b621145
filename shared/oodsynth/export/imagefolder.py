"""Hugging Face ``imagefolder`` layout: ``train/<class>/<id>.png``, ``train/metadata.jsonl``, a card README.md.

``datasets.load_dataset("imagefolder", data_dir=OUT)`` loads it with every manifest field as a column, and
torchvision's ``ImageFolder(OUT/train)`` loads it by class folder.
"""

from __future__ import annotations

import json

from ..store.results import ImageRecord, class_folder
from .base import DatasetCard, Exporter, manifest_columns

SPLIT = "train"


class ImageFolderExporter(Exporter):
    format = "imagefolder"
    layout = (
        f"`{SPLIT}/<class>/<image_id>.png` and `{SPLIT}/metadata.jsonl` (one row per image: `file_name` plus every "
        'manifest field). Load with `datasets.load_dataset("imagefolder", data_dir=...)` or torchvision\'s '
        f"`ImageFolder(.../{SPLIT})` (its class index follows the sorted folder names; `class_index` is the "
        "generator's)."
    )

    def __init__(self, out, storage_options=None, **options):
        super().__init__(out, storage_options)
        self.records: list[ImageRecord] = []
        self.files: list[str] = []

    def add(self, record: ImageRecord, png: bytes) -> None:
        self.files.append(self.output.write(f"{SPLIT}/{class_folder(record.class_name)}/{record.image_id}.png", png))
        self.records.append(record)
        self.n += 1

    def finish(self, card: DatasetCard) -> list[str]:
        rows = manifest_columns(self.records)
        lines = [
            json.dumps({"file_name": f.removeprefix(f"{SPLIT}/"), **row}, allow_nan=False) + "\n"
            for f, row in zip(self.files, rows)
        ]
        meta = self.output.write(f"{SPLIT}/metadata.jsonl", "".join(lines))
        readme = self.output.write("README.md", card.render())
        return [*self.files, meta, readme]
