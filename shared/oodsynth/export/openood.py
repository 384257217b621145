"""OpenOOD image list: ``images/<class>/<id>.png`` and ``imglist.txt``, one ``relative/path label`` line per image.

OpenOOD's ``ImglistDataset`` reads ``imglist_pth`` line by line, splits each at its first space into the image
path (joined to ``data_dir``) and the label (``int``; a negative label gets the uniform soft label its
outlier-exposure trainers use for outliers). So the outliers drop into a config's ``oe`` (or any OOD) dataset
with ``imglist_pth: OUT/imglist.txt`` and ``data_dir: OUT/``. ``label="ood"`` (default) writes -1 for every
image; ``label="class"`` the generator's class index. ``manifest.jsonl`` keeps the manifest rows (line i is
image i), which OpenOOD ignores.
"""

from __future__ import annotations

import json
import re

from ..errors import InputError
from ..store.results import ImageRecord, class_folder
from .base import DatasetCard, Exporter
from .portable import portable_row

IMGLIST = "imglist.txt"
MANIFEST = "manifest.jsonl"
LABELS = ("ood", "class")
OOD_LABEL = -1


def openood_folder(class_name: str) -> str:
    """The class folder without whitespace: OpenOOD splits a line at its first space."""
    return re.sub(r"\s+", "_", class_folder(class_name))


class OpenOODExporter(Exporter):
    format = "openood"
    layout = (
        f"`images/<class>/<image_id>.png`, `{IMGLIST}` (OpenOOD's imglist format: `images/<class>/<id>.png <label>` "
        "per line, -1 for an outlier or the class index with `--openood-label class`) and `manifest.jsonl` "
        f"(the manifest row of each line). In an OpenOOD dataset config: `imglist_pth: <this folder>/{IMGLIST}`, "
        "`data_dir: <this folder>/`."
    )

    def __init__(self, out, storage_options=None, *, label: str = "ood", **options):
        if label not in LABELS:
            raise InputError("label", f"unknown OpenOOD label {label!r}; choose from {', '.join(LABELS)}")
        super().__init__(out, storage_options)
        self.label = label
        self.lines: list[str] = []
        self.rows: list[str] = []
        self.files: list[str] = []

    def add(self, record: ImageRecord, png: bytes) -> None:
        relative = f"images/{openood_folder(record.class_name)}/{record.image_id}.png"
        self.files.append(self.output.write(relative, png))
        self.lines.append(f"{relative} {OOD_LABEL if self.label == 'ood' else record.class_index}\n")
        self.rows.append(json.dumps(portable_row(record.model_dump()), sort_keys=True, allow_nan=False) + "\n")
        self.n += 1

    def finish(self, card: DatasetCard) -> list[str]:
        card.extra.setdefault("OpenOOD labels", "-1 (outlier)" if self.label == "ood" else "class index")
        listing = self.output.write(IMGLIST, "".join(self.lines))
        manifest = self.output.write(MANIFEST, "".join(self.rows))
        return [*self.files, listing, manifest, self.output.write("README.md", card.render())]
