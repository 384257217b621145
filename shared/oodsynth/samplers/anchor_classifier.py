"""The anchor classifier cos(z, T(y))/t of the text-aligned encoder, seen from the samplers.

Between-class samplers need three things from it: which class a vector is
assigned to, how far it is from the decision boundary of its source class
(the margin), and which ID features sit closest to that boundary. Margins
are given in cosine units, cos(z, T(source)) - max_{j != source} cos(z, T(j)):
the logit margin times t, so they do not depend on the temperature. A
negative margin means the classifier assigns the vector to another class.
"""

from __future__ import annotations

import numpy as np


def unit_anchors(anchors: np.ndarray, dtype=np.float32) -> np.ndarray:
    a = np.asarray(anchors, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(dtype)


def margin_and_rival(
    unit_vectors: np.ndarray, source: np.ndarray | int, anchors_unit: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the margin of its ``source`` class and the best other class (the rival / runner-up)."""
    cos = unit_vectors @ anchors_unit.T.astype(unit_vectors.dtype, copy=False)  # (M, C)
    rows = np.arange(cos.shape[0])
    source = np.broadcast_to(np.asarray(source, dtype=np.int64), rows.shape)
    own = cos[rows, source].copy()
    cos[rows, source] = -np.inf
    rival = cos.argmax(axis=1)
    return (own - cos[rows, rival]).astype(np.float64), rival.astype(np.int64)


def boundary_points(
    class_features: np.ndarray, c: int, anchors_unit: np.ndarray, select: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``select`` features of class ``c`` nearest its decision boundary: (points, rivals, margins).

    Only correctly classified features (positive margin) are candidates, so that
    "crossing" means leaving the source class; a class with none falls back to
    all its features.
    """
    margin, rival = margin_and_rival(class_features, c, anchors_unit)
    ok = np.flatnonzero(margin > 0)
    if ok.size == 0:
        ok = np.arange(len(margin))
    order = ok[np.argsort(margin[ok], kind="stable")[:select]]
    return class_features[order], rival[order], margin[order]
