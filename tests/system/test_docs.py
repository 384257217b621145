"""The documentation site builds with `mkdocs build --strict` (a broken link or anchor fails it), and the
configuration page names every setting."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from oodsynth.config import Settings
from tests.helpers.paths import REPO

pytestmark = pytest.mark.slow  # mkdocs builds in a subprocess


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_site_builds_strict(tmp_path):
    build = mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert build.returncode == 0, build.stderr[-4000:]
    for page in ("index", "quickstart/index", "reference/index", "results/index", "operations/index", "lab/index"):
        assert (tmp_path / "site" / f"{page}.html").is_file(), page
    reference = (tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8")
    for name in ("oodsynth.client.OodsynthClient.sample", "oodsynth.bank.FeatureBank", "oodsynth.errors.InputError"):
        assert f'id="{name}"' in reference, name  # mkdocstrings rendered it from the docstrings
    assert "Upload a bank" in reference  # a docstring's text (OodsynthClient.fit), not only the names


def test_a_broken_link_fails_the_build(tmp_path):
    """The same site with one link to a missing page and one to a missing anchor: strict mode refuses both."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "docs", copy / "docs", symlinks=True)
    (copy / "bench").symlink_to(REPO / "bench")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "usage.md"
    original = page.read_text(encoding="utf-8")
    for broken in ("[gone](no-such-page.md)", "[gone](results.md#no-such-section)"):
        page.write_text(original + f"\n{broken}\n", encoding="utf-8")
        build = mkdocs_build(copy / "mkdocs.yml", tmp_path / "site")
        assert build.returncode != 0 and "no-such-" in build.stderr, (broken, build.stderr[-2000:])


def test_the_configuration_page_names_every_setting():
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`OODSYNTH_([A-Z0-9_]+)`", page))
    fields = {name.upper() for name in Settings.model_fields}
    assert fields <= documented, f"add a row to docs/configuration.md for each of: {sorted(fields - documented)}"
    assert documented <= fields, sorted(documented - fields)
