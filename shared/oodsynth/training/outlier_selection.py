"""Which stored outliers train-ood keeps: the verification selection (an ID-percentile band and a margin
filter, ``decoding.verification.Selection``) resolved from the user's flags and applied to manifest rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ..errors import InputError
from ..store.results import ImageRecord

if TYPE_CHECKING:
    from ..decoding.verification import Selection


def verified_key() -> str:
    from ..decoding.verification import MANIFEST_PREFIX

    return f"{MANIFEST_PREFIX}id_percentile"


def unverified_count(records: list[ImageRecord]) -> int:
    """How many records carry no re-encoded ID percentile (decoded without verification)."""
    key = verified_key()
    return sum(key not in r.diagnostics for r in records)


def asks_more(min_id_percentile: float, max_margin: float | None) -> bool:
    """Whether a band minimum or a margin filter is asked for (then the images must be verified)."""
    return min_id_percentile != 0 or max_margin is not None


def resolve_selection(
    max_id_percentile: float | Literal["auto"] | None,
    min_id_percentile: float = 0.0,
    max_margin: float | None = None,
    records: list[ImageRecord] | None = None,
) -> Selection | None:
    """The selection train-ood applies, or None for every image. ``"auto"``: ``DEFAULT_MAX_ID_PERCENTILE`` when
    every one of ``records`` (None: a stream, unknown) is verified or a minimum or margin filter asks for
    verification, else none; None: none, or no upper bound when a minimum or margin filter is asked for."""
    from ..decoding.verification import DEFAULT_MAX_ID_PERCENTILE, Selection

    asked = asks_more(min_id_percentile, max_margin)
    if max_id_percentile == "auto":
        all_verified = records is None or (bool(records) and not unverified_count(records))
        if not (asked or all_verified):
            return None
        max_id_percentile = DEFAULT_MAX_ID_PERCENTILE
    elif max_id_percentile is None:
        if not asked:
            return None
        max_id_percentile = 100.0
    return Selection(min_id_percentile, max_id_percentile, max_margin)


def verified_only(records: list[ImageRecord], selection: Selection | float) -> list[ImageRecord]:
    """The records whose re-encoded image passes ``selection`` (or sits at or below a bare ID-percentile threshold;
    ``oodsynth.decoding.verification``).

    Images decoded without verification carry no such field, nor images verified before margins were recorded a
    margin under a margin filter: that is an error naming the filter, not a silent pass.
    """
    from ..decoding.verification import MANIFEST_PREFIX, Selection, Verification

    selection = Selection.of(selection)
    checks = [("max_id_percentile", verified_key(), "decoded without verification")]
    if selection.max_margin is not None:
        checks.append(("max_margin", f"{MANIFEST_PREFIX}margin", "verified before margins were recorded"))
    for field, key, why in checks:
        missing = sum(key not in r.diagnostics for r in records)
        if missing:
            raise InputError(field, f"{missing} of {len(records)} images carry no {key} ({why})")
    keep = selection.passes(Verification.from_manifest([r.diagnostics for r in records]))
    return [r for r, ok in zip(records, keep, strict=True) if ok]


def tightest_field(selection: Selection) -> str:
    """The field to loosen when a selection keeps nothing: the margin filter, else the band's minimum, else its
    maximum."""
    if selection.max_margin is not None:
        return "max_margin"
    return "min_id_percentile" if selection.min_id_percentile > 0 else "max_id_percentile"
