"""Hugging Face ``imagefolder`` layout: ``train/<class>/<id>.png``, ``train/metadata.parquet``, a card README.md.

``datasets.load_dataset("imagefolder", data_dir=OUT)`` loads it with a ``label`` ClassLabel column (the class
names by the generator's class index) and every manifest field as a typed column: the metadata is Parquet
because its schema carries the ``datasets`` features (a JSON Lines file would give a plain int and no label).
torchvision's ``ImageFolder(OUT/train)`` loads it by class folder.
"""

from __future__ import annotations

from ..store.results import ImageRecord, class_folder
from .base import DatasetCard, Exporter, manifest_columns
from .features import class_names, image_feature, label_features, row_features, string_feature

SPLIT = "train"
METADATA = f"{SPLIT}/metadata.parquet"


class ImageFolderExporter(Exporter):
    format = "imagefolder"
    layout = (
        f"`{SPLIT}/<class>/<image_id>.png` and `{METADATA}` (one row per image: `file_name`, `label` and every "
        'manifest field). Load with `datasets.load_dataset("imagefolder", data_dir=...)` (or the hub id), or '
        f"torchvision's `ImageFolder(.../{SPLIT})` (its class index follows the sorted folder names; `label` and "
        "`class_index` are the generator's)."
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
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = manifest_columns(self.records)
        columns = row_features(rows)
        names = card.class_names or class_names(self.records)
        meta = label_features(names, columns, {"file_name": string_feature()})
        table = pa.Table.from_pylist(
            [
                {"file_name": f.removeprefix(f"{SPLIT}/"), "label": r.class_index, **{k: row[k] for k in columns}}
                for f, r, row in zip(self.files, self.records, rows)
            ],
            schema=meta.arrow_schema,
        )
        with self.output.open(METADATA) as f:
            pq.write_table(table, f)
        card.configs = [{"config_name": "default", "data_files": [{"split": SPLIT, "path": f"{SPLIT}/**"}]}]
        card.features = label_features(names, columns, {"image": image_feature()})
        return [*self.files, METADATA, self.output.write("README.md", card.render())]
