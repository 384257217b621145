"""Small result stores of smooth random images, written through ``ResultStore`` like the worker writes them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from oodsynth.store.results import ImageRecord, ResultStore


def write_outliers(root, dataset: str, n_per_class: int, class_names: list[str], size: int = 48, seed: int = 0):
    """Smooth random blobs as stand-in generated images, written through the store like the worker does."""
    rng = np.random.default_rng(seed)
    store = ResultStore(root)
    for c, name in enumerate(class_names):
        for i in range(n_per_class):
            low = rng.random((4, 4, 3))
            img = Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            record = ImageRecord(
                image_id=f"{name}-{i}",
                class_index=c,
                class_name=name,
                vector_id=f"v{c}-{i}",
                sampler="knn_boundary",
                seed=i,
                model="test-blobs",
                prompt=f"A photo of {name}",
            )
            assert store.write_image(dataset, record, img)
    return store


CLASSES = ("cat", "dog", "ship")


def make_store(root, dataset: str = "blobs", per_class: int = 4, seed: int = 0, size: int = 24) -> ResultStore:
    """A small generated dataset: smooth random images with full manifest rows (two samplers, verified)."""
    rng = np.random.default_rng(seed)
    store = ResultStore(root)
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            img = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            pct = float(rng.uniform(0, 30))
            record = ImageRecord(
                image_id=f"{name}-{i}",
                class_index=c,
                class_name=name,
                vector_id=f"s1:{c * per_class + i}",
                sampler="knn_boundary" if i % 2 else "boundary_crossing",
                sampler_params={"k": 5} if i % 2 else {"select": 600, "steps_beyond": 8.0},
                seed=i,
                model="tiny-sd",
                prompt=f"a photo of <outlier:{name}>",
                diagnostics={
                    "id_percentile": pct / 3,
                    "knn_distance": None if i == 0 else i / 2,
                    "verified_id_percentile": pct,
                },
                decode={"preset": "fast", "steps": 4, "cache_interval": None, "height": 64, "width": 64},
                job_id=f"job-{c}",
            )
            assert store.write_image(dataset, record, img)
    return store


def write_verified_images(root, diagnostics: list[dict], classes: list[int] | None = None, class_names=None):
    """Dataset "dec": image i (a flat 16 px colour) with ``diagnostics[i]`` in its manifest row (the worker's
    verification fields, or none), of class ``classes[i]`` (default 0) named ``class_names[c]`` (default str(c))."""
    store = ResultStore(root)
    for i, diag in enumerate(diagnostics):
        c = 0 if classes is None else int(classes[i])
        record = ImageRecord(
            image_id=f"img-{i}",
            class_index=c,
            class_name=class_names[c] if class_names else str(c),
            vector_id=f"v{i}",
            sampler="boundary_crossing",
            seed=i,
            model="test",
            prompt="p",
            diagnostics=diag,
        )
        assert store.write_image("dec", record, Image.new("RGB", (16, 16), (i * 20, 0, 0)))
    return store
