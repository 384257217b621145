"""No library function over 80 lines and no module over 400 (the house rules): every function of ``shared/oodsynth`` and ``services``,
decorators included, counted from its ``def`` (or first decorator) to its last line."""

from __future__ import annotations

import ast

from tests.helpers.paths import REPO

LIMIT = 80


def function_lengths(root) -> dict[str, int]:
    """``path:line:name`` -> lines, for every function and method under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                assert node.end_lineno is not None
                out[f"{path.relative_to(REPO)}:{node.lineno}:{node.name}"] = node.end_lineno - start + 1
    return out


def test_the_counter_counts_def_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.system.test_function_length.REPO", tmp_path)
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    (tmp_path / "m.py").write_text(f"@staticmethod\ndef long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert function_lengths(tmp_path) == {"m.py:2:long": 83, "m.py:86:short": 2}  # decorator to last line: 83


def test_no_library_function_is_over_80_lines():
    lengths = {**function_lengths(REPO / "shared" / "oodsynth"), **function_lengths(REPO / "services")}
    assert len(lengths) > 500  # the walk found the library
    too_long = {name: n for name, n in lengths.items() if n > LIMIT}
    assert not too_long, f"split these into named stages: {too_long}"


MODULE_LIMIT = 400  # lines: a module past it holds more than one idea (the house rule since the regroup)


def test_no_library_module_is_over_400_lines():
    paths = [*(REPO / "shared" / "oodsynth").rglob("*.py"), *(REPO / "services").rglob("*.py")]
    assert len(paths) > 100  # the walk found the library
    too_long = {str(p.relative_to(REPO)): n for p in paths if (n := len(p.read_text().splitlines())) > MODULE_LIMIT}
    assert not too_long, f"split these by idea: {too_long}"
