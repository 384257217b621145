"""Is the trained decoder honest? Decode class anchors (and points between them) and let an
independent classifier, trained on real images only, say what they show.

The judge is a small CNN unrelated to the text-aligned encoder, so agreement
means the decoded image looks like the class to a model that never saw the
decoder or the anchors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import ImageData, image_tensors


def reference_classifier(n_classes: int, width: int = 32) -> nn.Module:
    """Two conv blocks and a linear layer: enough for 16-32 px silhouettes and digits."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(2 * width, n_classes),
    )


def train_reference_classifier(train: ImageData, *, epochs: int = 15, seed: int = 0, batch_size: int = 64) -> nn.Module:
    """Adam on the real training images with small random shifts (the decoder's images are not pixel-aligned)."""
    torch.manual_seed(seed)
    x, y = image_tensors(train)
    model = reference_classifier(len(train.class_names))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            xb = x[idx]
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
            xb = torch.roll(xb, shifts=(dx, dy), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, C) softmax."""
    model.eval()
    return torch.softmax(model(images.float()), dim=1).numpy()


def accuracy(model: nn.Module, data: ImageData) -> float:
    x, y = image_tensors(data)
    return float((predict(model, x).argmax(1) == y.numpy()).mean())


def pil_to_tensor(images, size: int) -> torch.Tensor:
    """PIL images -> (N, 3, size, size) floats in [0, 1] (resized if the decoder wrote another size)."""
    from PIL import Image

    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255
        for im in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def scale_to(vectors: np.ndarray, norms: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True) * np.asarray(norms, dtype=np.float32).reshape(-1, 1)


def midpoints(anchors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Normalised mean of each pair's anchor directions, at the pair's mean anchor norm."""
    a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    norms = np.linalg.norm(anchors, axis=1)
    return scale_to(a[pairs[:, 0]] + a[pairs[:, 1]], norms[pairs].mean(1))


def neighbour_pairs(class_means: np.ndarray) -> np.ndarray:
    """(C, 2) pairs (c, nearest other class by cosine of the class-mean features)."""
    m = class_means / np.linalg.norm(class_means, axis=1, keepdims=True)
    cos = m @ m.T
    np.fill_diagonal(cos, -np.inf)
    return np.stack([np.arange(len(m)), cos.argmax(1)], axis=1)


@dataclass
class JudgedDecode:
    """How the decoder runs for the judge (the offline decoders' own settings by default)."""

    steps: int = 20
    guidance_scale: float = 2.0
    scheduler: str = "ddim"
    image_size: int = 16


def decode_vectors(decoder, vectors: np.ndarray, seeds, settings: JudgedDecode):
    """Decode with the worker's own ``OutlierDecoder`` path, at the decoder's native size."""
    return decoder.decode(
        vectors,
        seeds,
        steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        height=settings.image_size,
        width=settings.image_size,
        output_size=None,
        scheduler=settings.scheduler,
    )


def anchor_accuracy(
    decoder, classifier: nn.Module, anchors: np.ndarray, settings: JudgedDecode, n_per_class: int = 8, seed: int = 0
) -> tuple[float, np.ndarray, list]:
    """Share of decoded anchors (n_per_class seeds each) the classifier labels as their class."""
    labels = np.repeat(np.arange(len(anchors)), n_per_class)
    seeds = [seed + i for i in range(len(labels))]
    images = decode_vectors(decoder, anchors[labels], seeds, settings)
    pred = predict(classifier, pil_to_tensor(images, settings.image_size)).argmax(1)
    return float((pred == labels).mean()), pred, images


def reconstruction_check(
    decoder,
    classifier: nn.Module,
    encoder,
    fit,
    test,
    settings: JudgedDecode,
    n_per_class: int = 8,
    seed: int = 20_000,
) -> dict:
    """Decode the encoder features of real test images (n per class, scaled to their anchor's norm as in
    training): does the judge still see their class, and where do they re-encode under the ID ``fit``?

    A decoder whose reconstructions of real ID images sit far below real images' ID percentile leaves a cue (how
    an image was drawn) that a detector trained on its outliers can learn instead of what they show.
    """
    from ..decoding.verification import verify_images

    x, y = image_tensors(test)
    idx = np.concatenate([np.flatnonzero(y.numpy() == c)[:n_per_class] for c in range(len(test.class_names))])
    with torch.no_grad():
        z = F.normalize(encoder.model.embed(x[idx]), dim=1)
    vectors = (z * torch.as_tensor(encoder.anchors).norm(dim=1)[y[idx]].unsqueeze(1)).numpy()
    images = decode_vectors(decoder, vectors, [seed + i for i in range(len(idx))], settings)
    decoded = pil_to_tensor(images, settings.image_size)
    pred = predict(classifier, decoded).argmax(1)
    return {
        "reconstruction_accuracy": float((pred == y[idx].numpy()).mean()),
        "reconstruction_median_id_percentile": float(np.median(verify_images(encoder, fit, decoded).id_percentile)),
        "real_median_id_percentile": float(np.median(verify_images(encoder, fit, x[idx]).id_percentile)),
    }


def midpoint_agreement(
    decoder,
    classifier: nn.Module,
    anchors: np.ndarray,
    pairs: np.ndarray,
    settings: JudgedDecode,
    n_per_pair: int = 8,
    seed: int = 10_000,
) -> dict:
    """For decoded midpoints between neighbouring classes: share labelled as the first, the second, either class."""
    mids = midpoints(anchors, pairs)
    rows = np.repeat(np.arange(len(pairs)), n_per_pair)
    images = decode_vectors(decoder, mids[rows], [seed + i for i in range(len(rows))], settings)
    pred = predict(classifier, pil_to_tensor(images, settings.image_size)).argmax(1)
    first, second = pred == pairs[rows, 0], pred == pairs[rows, 1]
    return {
        "first": float(first.mean()),
        "second": float(second.mean()),
        "either": float((first | second).mean()),
        "images": images,
    }
