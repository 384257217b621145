"""oodsynth: imagine outliers for out-of-distribution detection.

The library every part imports: feature banks, anchors, class densities,
samplers, job schemas, queue connection, result store, encoder, training,
metrics and the CLI. No web framework and no queue-worker code lives here.

The Python way in, at top level: ``OodsynthClient`` (the API's client), ``FeatureBank``, the sampler registry
(``SAMPLERS``, ``get_sampler``, ``DEFAULT_METHOD``) and ``export_dataset``. They load on first use (module
``__getattr__``), so ``import oodsynth`` stays cheap: it loads neither numpy nor torch nor an HTTP client.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it (relative to this package)
_LAZY = {
    "OodsynthClient": ".client",
    "FeatureBank": ".bank",
    "SAMPLERS": ".samplers",
    "DEFAULT_METHOD": ".samplers",
    "get_sampler": ".samplers",
    "export_dataset": ".service.export",
}

if TYPE_CHECKING:
    from .bank import FeatureBank
    from .client import OodsynthClient
    from .samplers import DEFAULT_METHOD, SAMPLERS, get_sampler
    from .service.export import export_dataset


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'oodsynth' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "DEFAULT_METHOD",
    "SAMPLERS",
    "FeatureBank",
    "OodsynthClient",
    "__version__",
    "export_dataset",
    "get_sampler",
]
