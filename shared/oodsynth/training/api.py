"""The one contract every OOD score keeps, and its sign (after pytorch-ood's ``api.py``).

**Every score is "higher = more in-distribution".** ID is the positive class of ``metrics`` (FPR95, AUROC,
AUPR-in/out), so a score goes into a report as it comes out of ``score``. pytorch-ood's detectors score the other
way (higher = more OOD); ``posthoc.PytorchOODDetector`` negates them where it calls pytorch-ood, and nowhere else
converts a sign. The implementers:

- ``posthoc.PytorchOODDetector``: each of pytorch-ood's detectors (energy, msp, knn, vim, react, ...);
- ``detectors.FusedDetector``: several of them, standardised on ID train and summed;
- ``evaluation.PhiScore``: the project's trained score, P(ID) from the logistic head on the energy;
- ``evaluation.DensityScore``: the max class log-density of the encoder feature (``densities/``).

An evaluation without an OOD set raises ``NoOODSets`` (``require_ood_sets``), wherever it is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..errors import NoOODSets

SCORE_SIGN = "higher = more in-distribution"

T = TypeVar("T", bound="Detector")


@runtime_checkable
class Detector(Protocol):
    """A named OOD score: ``fit`` on the ID train set (a no-op where nothing is fitted), then ``score`` any data."""

    name: str

    def fit(self: T, train: Any, *, batch_size: int = 256) -> T:
        """Fit on the ID train set; returns the detector."""
        ...

    def score(self, data: Any, *, batch_size: int = 256) -> np.ndarray:
        """One float per sample, higher = more in-distribution (``SCORE_SIGN``)."""
        ...


def require_ood_sets(ood_sets: Mapping[str, Any] | list | tuple) -> None:
    """Raise ``NoOODSets`` when there is no OOD set, or one of them holds no image: every AUROC needs both sides."""
    if not ood_sets:
        raise NoOODSets()
    if isinstance(ood_sets, Mapping):
        for name, data in ood_sets.items():
            held = getattr(data, "dataset", data)
            if isinstance(held, Sized) and len(held) == 0:
                raise NoOODSets(f"the OOD set {name!r} holds no image")
