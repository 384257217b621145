"""k-th nearest-neighbour distances on the unit sphere.

Both k-NN samplers and the ``knn_distance`` diagnostic only need the distance
to the k-th neighbour, never the neighbours themselves. Two backends:

- ``"blas"`` (default): one matrix product per block of queries (squared L2 of
  unit vectors is ``2 - 2 cos``) and a partial sort. When ``k`` is a large
  fraction of the bank (DREAM-OOD: k=300 of 500 points per class) this is
  about 3x faster than a k-heap search because it never materialises the
  ``k`` neighbours.
- ``"faiss"``: ``faiss.IndexFlatL2``, exactly what the DREAM-OOD reference uses
  (kept for the reference benchmark and for very large banks).

Distances are Euclidean (not squared) between unit vectors.
"""

from __future__ import annotations

import numpy as np

from ..batching import slices
from ..errors import InputError

KNN_BACKENDS = ("blas", "faiss")
_BLOCK_BYTES = 64 * 2**20  # bound the (queries x bank) distance block


def kth_neighbor_distance(
    queries: np.ndarray,
    bank: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    backend: str = "blas",
) -> np.ndarray:
    """Distance from each unit query to its ``k``-th nearest unit row of ``bank``.

    ``exclude_self=True`` is for queries that *are* the bank rows: the zero
    distance to itself is skipped, so ``k`` counts other points only.
    """
    if backend not in KNN_BACKENDS:
        raise InputError("backend", f"unknown k-NN backend {backend!r}; choose one of {KNN_BACKENDS}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    n_bank = bank.shape[0]
    kk = k + 1 if exclude_self else k
    if not 1 <= kk <= n_bank:
        raise InputError("k", f"need 1 <= k <= {n_bank - int(exclude_self)} (bank size), got {k}")
    out = np.empty(queries.shape[0], dtype=np.float32)
    if backend == "faiss":
        try:
            import faiss
        except ImportError:
            raise InputError(
                "backend", "the faiss backend needs the faiss extra: pip install 'oodsynth[faiss]'"
            ) from None

        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(bank)
        step = max(1, _BLOCK_BYTES // (12 * kk))
        for block in slices(queries.shape[0], step):
            d2, _ = index.search(queries[block], kk)
            out[block] = d2[:, -1]
    else:
        step = max(1, _BLOCK_BYTES // (4 * n_bank))
        for block in slices(queries.shape[0], step):
            q = queries[block]
            d2 = np.add.outer((q * q).sum(1), (bank * bank).sum(1))
            d2 -= 2.0 * (q @ bank.T)
            out[block] = np.partition(d2, kk - 1, axis=1)[:, kk - 1]
    return np.sqrt(np.clip(out, 0.0, None))
