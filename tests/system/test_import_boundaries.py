"""The layer rules hold: the import-linter contracts in pyproject.toml, checked by `lint-imports` on the real
import graph (the library never imports the services; each layer imports only the layers below it; the model
rooms do no I/O; no import cycles)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

pytestmark = pytest.mark.slow  # lint-imports in a subprocess

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def contracts() -> list[dict]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]


def test_every_contract_is_kept():
    run = lint_imports()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    names = [c["name"] for c in contracts()]
    assert len(names) >= 6
    assert f"Contracts: {len(names)} kept, 0 broken." in run.stdout, run.stdout[-3000:]
    types = {c["type"] for c in contracts()}
    assert {"forbidden", "layers", "acyclic_siblings"} <= types


def test_the_layers_cover_every_module_of_the_library():
    """A new top-level module or subpackage must be placed in a layer (the contract is exhaustive)."""
    (layers,) = [c for c in contracts() if c["type"] == "layers"]
    assert layers["exhaustive"] is True and layers["containers"] == ["oodsynth"]
    placed = {name.strip() for layer in layers["layers"] for name in layer.replace(":", "|").split("|")}
    library = REPO / "shared" / "oodsynth"
    present = {p.stem for p in library.glob("*.py") if p.stem != "__init__"}
    present |= {p.parent.name for p in library.glob("*/__init__.py")}
    assert placed == present, (sorted(present - placed), sorted(placed - present))


def test_the_checker_sees_the_real_graph(tmp_path):
    """The same tool on the same graph with the layers upside down: every pair breaks, so a kept contract above is
    a real check and not an empty one."""
    upside_down = tmp_path / "importlinter.toml"
    upside_down.write_text(
        '[tool.importlinter]\nroot_packages = ["oodsynth", "services"]\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "errors above the CLI"\ntype = "layers"\ncontainers = ["oodsynth"]\nlayers = ["errors", "cli"]\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "the services above nothing"\ntype = "forbidden"\nsource_modules = ["services"]\n'
        'forbidden_modules = ["oodsynth"]\n',
        encoding="utf-8",
    )
    run = lint_imports("--config", str(upside_down))
    assert run.returncode == 1, run.stdout[-3000:]
    assert "Contracts: 0 kept, 2 broken." in run.stdout, run.stdout[-3000:]
    assert "oodsynth.cli" in run.stdout and "oodsynth.errors" in run.stdout
