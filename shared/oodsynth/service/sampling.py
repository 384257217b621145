"""Use case: draw outlier vectors from a stored fit and keep them as a sample."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pydantic

from ..api_keys import LOCAL, KeyGrant
from ..config import Settings
from ..errors import InputError, split_field
from ..names import normalize_name
from ..samplers import DEFAULT_METHOD
from ..state.fits import FitRegistry
from ..state.samples import SampleRegistry, StoredSample

# What a sample request names; a sampler error about anything else is about one of its params.
REQUEST_FIELDS = frozenset({"fit", "method", "n_per_class", "classes", "seed", "params", "scale_to_anchor"})


def check_n_per_class(n_per_class: int, settings: Settings) -> None:
    cap = settings.max_n_per_class
    if n_per_class < 1:
        raise InputError("n_per_class", "must be at least 1")
    if n_per_class > cap:
        raise InputError("n_per_class", f"{n_per_class} is above the cap of {cap} (settings OODSYNTH_MAX_N_PER_CLASS)")


def get_sampler_checked(method: str, params: Mapping[str, Any] | None):
    """The sampler, with bad parameters blamed as ``params.<name>``."""
    from ..samplers import get_sampler  # numpy/scipy work: imported when sampling

    try:
        return get_sampler(method, dict(params or {}))
    except pydantic.ValidationError as exc:
        raise InputError.from_pydantic(exc, "params") from exc


def draw_sample(
    fits: FitRegistry,
    samples: SampleRegistry,
    settings: Settings,
    *,
    fit: str,
    method: str = DEFAULT_METHOD,
    n_per_class: int,
    classes: Sequence[int | str] | None = None,
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    scale_to_anchor: bool = True,
    knn_diagnostics: bool = False,
    json_answer: bool = False,
    admit: Callable[[int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    caller: KeyGrant = LOCAL,
    on_evicted: Callable[[list[str]], None] | None = None,
) -> StoredSample:
    """Run ``method`` on the fit's classes under the settings' caps; the sample is kept in ``samples``.

    ``json_answer``: the caller will spell the vectors out as JSON, so a request whose answer would pass
    ``max_json_values`` is refused from its size, before anything is sampled. ``admit(nbytes)`` is called
    with the request's estimated peak memory once its size is known, before sampling (it may refuse).
    The fit must be one the caller sees; the sample belongs to the caller's tenant. ``on_evicted(ids)`` hears which
    of that tenant's samples were evicted to keep it within its budget.
    """
    check_n_per_class(n_per_class, settings)
    densities, bank = fits.get(fit, caller=caller)
    class_index = resolve_classes(densities.class_names_, classes)
    n_classes, dim = densities._check_fitted()  # a stored fit is fitted
    total = n_per_class * (len(class_index) if class_index is not None else n_classes)
    cap = settings.max_vectors_per_sample
    if total > cap:  # 100 classes x 10,000 x 768-d would be 3 GB in Redis and in the answer
        raise InputError(
            "n_per_class",
            f"{total} vectors requested ({n_per_class} per class), above the cap of {cap} "
            "(settings OODSYNTH_MAX_VECTORS_PER_SAMPLE); ask for fewer classes per request",
        )
    if json_answer:
        check_json_size(total, dim, settings)
    sampler = get_sampler_checked(method, params)
    if admit is not None:
        admit(total * dim * PEAK_BYTES_PER_VALUE)
    try:
        result = sampler.sample(
            densities,
            n_per_class,
            classes=class_index,
            seed=seed,
            bank=bank if (sampler.needs_bank or knn_diagnostics) else None,
            scale_to_anchor=scale_to_anchor,
            progress=progress,
            time_budget_s=settings.sample_time_budget_s,
        )
    except InputError as exc:  # a parameter combination the sampler cannot run with on this fit
        field = blamed_field(exc.field, sampler.Params.model_fields)
        raise InputError(field, f"{method} cannot run with these inputs: {exc.message}") from exc
    except ValueError as exc:  # an untyped check inside a sampler: still the caller's parameters
        raise InputError("params", f"{method} cannot run with these inputs: {exc}") from exc
    stored = StoredSample.from_result(result, fit, densities.class_names_)
    evicted = samples.store(stored, caller=caller)
    if on_evicted is not None:
        on_evicted(evicted)
    return stored


# Fields of the stored fit's data a sampler or density may name: the request field for them is the fit.
FIT_DATA_FIELDS = frozenset({"bank", "features", "labels", "anchors", "class_names"})


def blamed_field(field: str | None, params: Mapping[str, Any]) -> str:
    """The request field a sampler's error is about: one of its params, a request field, the fit, or params.

    A sampler checks internal arrays too (``X``, ``features``): naming ``params.X`` would send the
    caller looking for a parameter that does not exist.
    """
    root = str(split_field(field)[0]) if split_field(field) else ""
    if root in params:
        return f"params.{field}"
    if root in REQUEST_FIELDS:
        return str(field)
    return "fit" if root in FIT_DATA_FIELDS else "params"


# Peak memory of one /sample per number of its vectors: 932 MB over idle for 50,000 x 768 with inverse_rejection,
# answered as .npz (bench/hostile_memory.py), about 24 bytes per float32 kept.
PEAK_BYTES_PER_VALUE = 24
MIN_DIAGNOSTICS = 4  # log_density, id_percentile, knn_distance, cos_to_mean (some samplers add more)


def check_json_size(n_vectors: int, dim: int, settings: Settings) -> None:
    """Refuse, before sampling, a request whose JSON answer would hold more than ``max_json_values`` numbers."""
    values = n_vectors * (dim + 1 + MIN_DIAGNOSTICS)
    if values > settings.max_json_values:
        raise InputError(
            "include_vectors",
            f"the answer would hold {values} numbers as JSON ({n_vectors} vectors of {dim}), above the cap of "
            f"{settings.max_json_values} (settings OODSYNTH_MAX_JSON_VALUES); nothing was sampled: ask for the "
            ".npz (Accept: application/x-npz, or ?format=npz), with include_vectors=false, or for fewer vectors",
        )


def check_json_answer(sample: StoredSample, settings: Settings) -> None:
    """Refuse to spell a large sample out as JSON (~24 bytes per number in Python, ~20 in the text).

    The sample is kept: the message says how to fetch it as ``.npz`` (4 bytes per number).
    """
    values = sample.vectors.size + len(sample.class_index) * (1 + len(sample.diagnostics))
    if values > settings.max_json_values:
        raise InputError(
            "include_vectors",
            f"the answer would hold {values} numbers as JSON, above the cap of {settings.max_json_values} "
            f"(settings OODSYNTH_MAX_JSON_VALUES); sample {sample.sample_id} is kept: fetch it as .npz "
            "(Accept: application/x-npz, or GET /samples/{id}?format=npz) or ask with include_vectors=false",
        )


def resolve_classes(class_names: Sequence[str], requested: Sequence[int | str] | None) -> list[int] | None:
    """Turn class indices and/or names into indices (order kept, duplicates dropped).

    ``None`` means every class. Raises ``InputError`` naming ``classes[i]`` for
    an unknown name or an index out of range, so the API and CLI say which entry.
    """
    if requested is None:
        return None
    if len(requested) == 0:
        raise InputError("classes", "give at least one class, or leave classes out for all of them")
    by_name = {normalize_name(str(n)): i for i, n in enumerate(class_names)}
    out: list[int] = []
    for pos, item in enumerate(requested):
        if isinstance(item, (bool, np.bool_)):
            raise InputError(f"classes[{pos}]", f"expected a class index or name, got {item!r}")
        if isinstance(item, (int, np.integer)):
            idx = int(item)
            if not 0 <= idx < len(class_names):
                raise InputError(f"classes[{pos}]", f"class index {idx} is out of range [0, {len(class_names)})")
        elif isinstance(item, str):
            name = normalize_name(item)  # class names are stored NFC: a decomposed spelling names the same class
            if name not in by_name:
                raise InputError(f"classes[{pos}]", f"unknown class name {item!r}")
            idx = by_name[name]
        else:
            raise InputError(f"classes[{pos}]", f"expected a class index or name, got {type(item).__name__}")
        if idx not in out:
            out.append(idx)
    return out
