"""Use case: fit one class density per class to a feature bank and store it under a name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..api_keys import LOCAL, KeyGrant
from ..bank import BankError, FeatureBank, load_bank
from ..config import get_settings
from ..errors import InputError, TooLarge
from ..state.fits import FitRegistry, fit_exists_error, validate_fit_name

BANK_ARRAYS = frozenset({"features", "labels", "anchors", "class_names"})  # what a fit's data error names


def create_fit(
    fits: FitRegistry,
    name: str,
    bank: str | Path | bytes | FeatureBank,
    density: str = "vmf",
    *,
    replace: bool = False,
    bank_field: str = "bank",
    progress: Callable[[int, int], None] | None = None,
    max_bank_bytes: int | None = None,
    caller: KeyGrant = LOCAL,
) -> dict:
    """Validate, fit and store; returns the stored summary.

    ``bank_field`` is what the caller calls the bank (``file`` for the API's
    upload), so a malformed array is blamed as ``<bank_field>.<array>``.
    Cheap checks (name, density, an existing fit) run before the bank is read, and the
    bank's members (``max_bank_bytes``, default from settings) each before it is decompressed (``oodsynth.npz``):
    a bank whose arrays would expand past it is ``TooLarge`` (413) on ``bank_field``. The fit belongs to the
    caller's tenant; a name another tenant holds is taken, replace or not (``FitRegistry.put``).
    """
    from ..densities import DENSITY_KINDS, ClassDensities  # scipy/torch: only when fitting

    name = validate_fit_name(name)
    if density not in DENSITY_KINDS:
        raise InputError("density", f"unknown density {density!r}; choose one of {', '.join(DENSITY_KINDS)}")
    if fits.exists(name) and not (replace and fits.sees(name, caller)):
        raise fit_exists_error(name, own=fits.sees(name, caller))
    if isinstance(bank, (str, Path)) and not Path(bank).is_file():
        raise InputError(bank_field, f"no such file: {bank}")
    if isinstance(bank, bytes) and not bank:
        raise InputError(bank_field, "the uploaded file is empty")
    try:
        feature_bank = (
            bank.validate()
            if isinstance(bank, FeatureBank)
            else load_bank(bank, max_bytes=max_bank_bytes or get_settings().max_bank_bytes)
        )
    except BankError as exc:
        field = bank_field if exc.field == "file" else f"{bank_field}.{exc.field}"
        raise InputError(field, exc.message) from exc
    except TooLarge as exc:  # 413: the archive's declared arrays are over the limit; nothing was inflated
        raise TooLarge(bank_field, exc.message) from exc
    try:
        densities = ClassDensities(kind=density).fit(feature_bank, progress=progress)
    except ValueError as exc:  # e.g. a full covariance that cannot be estimated from this bank
        array = getattr(exc, "field", None)  # an array of the bank (zero-norm features) is the bank's fault
        blamed = f"{bank_field}.{array}" if array in BANK_ARRAYS else "density"
        raise InputError(blamed, f"cannot fit {density!r} to this bank: {getattr(exc, 'message', exc)}") from exc
    return fits.put(name, densities, feature_bank, replace=replace, caller=caller)
