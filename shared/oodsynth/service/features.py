"""Use case: images -> unit-norm encoder features and the nearest-anchor class."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings
from ..errors import InputError, Unavailable

if TYPE_CHECKING:  # torch: loaded with the first encoder
    from ..encoding.features import ImageEmbedder

MAX_IMAGES = 256
MAX_PIXELS = 4096 * 4096  # per upload; the encoder resizes to a few dozen pixels anyway


class EmbedderCache:
    """The configured encoder checkpoint, loaded once per (path, mtime): a rewritten file is reloaded."""

    def __init__(self) -> None:
        self._key: tuple[str, float] | None = None
        self._embedder: ImageEmbedder | None = None
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> ImageEmbedder:
        from ..encoding.features import ImageEmbedder

        if settings.encoder_checkpoint is None:
            raise Unavailable(
                "encoder_checkpoint",
                "POST /features needs an encoder: start the API with "
                "OODSYNTH_ENCODER_CHECKPOINT=<path to encoder.pt from `oodsynth train-encoder`>",
            )
        path = Path(settings.encoder_checkpoint)
        file = path / "encoder.pt" if path.is_dir() else path
        if not file.is_file():
            raise Unavailable("encoder_checkpoint", f"encoder checkpoint {file} does not exist")
        key = (str(file.resolve()), file.stat().st_mtime)
        with self._lock:
            if self._key == key and self._embedder is not None:  # a known key has its embedder (set before the key)
                return self._embedder
            self._embedder, self._key = None, None
            try:
                embedder = self._embedder = ImageEmbedder(file, device=settings.device)
            except ValueError as exc:
                raise Unavailable("encoder_checkpoint", str(exc)) from None
            self._key = key
            return embedder


def embed_uploads(embedder: ImageEmbedder, files: Sequence[tuple[str | None, bytes]]) -> dict:
    """``{dim, class_names, items: [{filename, features, class_index, class_name, cosine}]}`` of ``(filename, bytes)`` images."""
    from PIL import Image, UnidentifiedImageError

    if not 1 <= len(files) <= MAX_IMAGES:
        raise InputError("files", f"send 1 to {MAX_IMAGES} images, got {len(files)}")
    images = []
    for i, (filename, data) in enumerate(files):
        name = filename or "file"
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:  # checked on the header, before decoding the pixels
                    raise InputError(
                        f"files[{i}]", f"{name} has {im.width}x{im.height} pixels, above the cap of {MAX_PIXELS}"
                    )
                images.append(im.convert("RGB"))
        except UnidentifiedImageError:
            raise InputError(f"files[{i}]", f"{name} is not a readable image (unknown image format)") from None
        except (OSError, Image.DecompressionBombError) as exc:
            raise InputError(f"files[{i}]", f"{name} is not a readable image ({exc})") from None
    out = embedder.embed(images)
    names = embedder.class_names
    items = [
        {
            "filename": filename,
            "features": out["features"][i].tolist(),
            "class_index": int(out["class_index"][i]),
            "class_name": names[int(out["class_index"][i])],
            "cosine": float(out["cosine"][i]),
        }
        for i, (filename, _) in enumerate(files)
    ]
    return {"dim": int(out["features"].shape[1]), "class_names": names, "items": items}
