"""``import oodsynth``: the Python way in at top level, loaded on first use so the import itself stays cheap."""

from __future__ import annotations

import subprocess
import sys

import oodsynth


def test_top_level_names_are_the_librarys():
    from oodsynth.bank import FeatureBank
    from oodsynth.client import OodsynthClient
    from oodsynth.samplers import DEFAULT_METHOD, SAMPLERS, get_sampler
    from oodsynth.service.export import export_dataset

    assert oodsynth.OodsynthClient is OodsynthClient and oodsynth.FeatureBank is FeatureBank
    assert oodsynth.SAMPLERS is SAMPLERS and oodsynth.get_sampler is get_sampler
    assert oodsynth.DEFAULT_METHOD == DEFAULT_METHOD and oodsynth.export_dataset is export_dataset
    assert set(oodsynth.__all__) <= set(dir(oodsynth))
    try:
        oodsynth.nothing_here  # noqa: B018
    except AttributeError as exc:
        assert "nothing_here" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_import_loads_no_heavy_module():
    code = (
        "import sys, oodsynth; print(sorted(m for m in ('numpy', 'torch', 'httpx', 'fastapi', 'datasets', 'redis') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
