"""The dataset card (README.md), built with huggingface_hub's ``DatasetCard``/``DatasetCardData``.

Its YAML is what the hub reads: ``configs`` (which files make the ``train`` split), ``dataset_info`` (the
features: the label a ``ClassLabel`` of the class names, every diagnostic typed), ``task_categories`` and one
license, the same one the text names. Nothing in it is a path of the machine that wrote it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..store.results import ImageRecord
from .portable import portable_model, portable_store, portable_value

if TYPE_CHECKING:
    import datasets
    from huggingface_hub import DatasetCardData

# Where the ID datasets the project knows come from: the hub's license id and the line the card prints.
SOURCE_LICENSES = {
    "digits": ("cc-by-4.0", "UCI ML hand-written digits (scikit-learn's copy), CC BY 4.0"),
    "animals": ("mit", "animal-mnist 0.4 (Animal silhouette extension to MNIST), MIT"),
    "cifar10": (
        "unknown",
        "CIFAR-10 (Krizhevsky 2009), no explicit license; terms at https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "cifar100": (
        "unknown",
        "CIFAR-100 (Krizhevsky 2009), no explicit license; terms at https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}
# License ids the hub knows that a --license value may name directly; any other text is "other".
HUB_LICENSES = frozenset(
    "apache-2.0 mit bsd-2-clause bsd-3-clause cc0-1.0 cc-by-2.0 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 "
    "cc-by-nc-2.0 cc-by-nc-4.0 cc-by-nc-sa-4.0 cc-by-nd-4.0 cc-by-nc-nd-4.0 gpl-3.0 lgpl-3.0 odbl odc-by pddl "
    "openrail creativeml-openrail-m unknown other".split()
)
TASK_CATEGORIES = ["image-classification"]


@dataclass
class DatasetCard:
    """What the images are, where they came from, counts per class; ``configs``/``features`` set by the exporter."""

    dataset: str
    store: str
    records: list[ImageRecord]
    format: str
    id_dataset: str | None = None
    encoder: str | None = None
    license: str | None = None
    selection: str = "all stored images"
    layout: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    configs: list[dict[str, Any]] = field(default_factory=list)
    features: datasets.Features | None = None
    class_names: list[str] | None = None  # by class index, all the dataset's classes (not only those exported)

    def license_id(self) -> tuple[str, str]:
        """The one license (a hub license id) and the line the text says about it."""
        if self.license:
            given = self.license.strip()
            if given.lower() in HUB_LICENSES:
                return given.lower(), "given with --license"
            return "other", given
        if self.id_dataset in SOURCE_LICENSES:
            return SOURCE_LICENSES[self.id_dataset]
        return "unknown", "not known: pass --license with the ID data's license (a hub id such as mit, or its line)"

    def card_data(self) -> DatasetCardData:
        """The YAML header as ``DatasetCardData`` (round-trips through ``DatasetCard.load(...).data``)."""
        from huggingface_hub import DatasetCardData

        license_id, line = self.license_id()
        extra: dict[str, Any] = {"configs": self.configs} if self.configs else {}
        if license_id == "other":
            extra["license_name"] = re.sub(r"[^a-z0-9]+", "-", line.lower()).strip("-")[:64] or "other"
        data = DatasetCardData(
            pretty_name=f"oodsynth outliers: {self.dataset}",
            license=license_id,
            task_categories=TASK_CATEGORIES,
            tags=["out-of-distribution", "synthetic", "oodsynth"],
            size_categories=[_size_category(len(self.records))],
            **extra,
        )
        if self.features is not None:
            from datasets.info import DatasetInfo, DatasetInfosDict

            info = DatasetInfo(features=self.features, splits=[{"name": "train", "num_examples": len(self.records)}])
            DatasetInfosDict({"default": info}).to_dataset_card_data(data)
        return data

    def render(self) -> str:
        from huggingface_hub import DatasetCard as HubCard

        return str(HubCard(f"---\n{self.card_data().to_yaml()}\n---\n\n{self.body()}"))

    def body(self) -> str:
        per_class = Counter((r.class_index, r.class_name) for r in self.records)
        license_id, line = self.license_id()
        count = {
            "Decoder model": Counter(portable_model(r.model) for r in self.records),
            "Sampler": Counter(r.sampler for r in self.records),
            "Sampler settings": Counter(
                json.dumps(portable_value(r.sampler_params), sort_keys=True) for r in self.records
            ),
            "Decode settings": Counter(json.dumps(portable_value(r.decode), sort_keys=True) for r in self.records),
        }
        lines = [
            f"# {self.dataset}: synthetic outliers",
            "",
            f"{len(self.records)} images generated by oodsynth (text-aligned features sampled from low-density "
            "regions of each class, decoded by a text-to-image model), exported as "
            f"`{self.format}` from the result store {portable_store(self.store)} ({self.selection}).",
            "",
            f"- ID dataset: {self.id_dataset or 'not given (pass --id-dataset)'}",
            f"- Encoder: {self.encoder or 'not given (pass --encoder)'}",
            f"- License: `{license_id}` ({line})",
            *(f"- {name}: {_counted(counter)}" for name, counter in count.items()),
            *(f"- {k}: {v}" for k, v in self.extra.items()),
            "",
            "## Images per class",
            "",
            "| class index | class | images |",
            "|---:|---|---:|",
            *(f"| {c} | {name} | {n} |" for (c, name), n in sorted(per_class.items())),
            "",
            "## Layout",
            "",
            self.layout,
            "",
        ]
        return "\n".join(lines)


def _counted(counter: Counter) -> str:
    return "; ".join(f"`{k}` ({n})" if len(counter) > 1 else f"`{k}`" for k, n in counter.most_common()) or "-"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"
