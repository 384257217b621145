"""Running cells (cached as JSON, keyed by what each row depends on) and the whole benchmark, results written after each cell."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import ProfileSplit
from .assets import LabAssets, _atomic_write
from .cells import SHORTCUT_SET, Cell, CellNotRun, CellOutcome, LabData, Row
from .report import results_markdown, summarise
from .rows import lab_rows
from .settings import LabSettings


def score_metrics(report: dict, score: str) -> dict:
    """near/far FPR95 and AUROC of one score of a report (``EvaluationReport.to_dict()``; far = mean over the far
    sets; ``far_kinds``: per far set)."""
    sets = {name: m for name, m in report["scores"][score].items() if name != "average"}
    near = [m for name, m in sets.items() if name.startswith("near:")]
    far = [m for name, m in sets.items() if name.startswith("far:")]
    summary = {
        f"{group}_{m}": float(np.mean([r[m] for r in rows]))
        for group, rows in (("near", near), ("far", far))
        for m in ("fpr95", "auroc")
    }
    kinds = {
        name[4:]: {"fpr95": float(m["fpr95"]), "auroc": float(m["auroc"])}
        for name, m in sets.items()
        if name.startswith("far:")
    }
    shortcut = {"shortcut_auroc": float(sets[SHORTCUT_SET]["auroc"])} if SHORTCUT_SET in sets else {}
    return {**summary, "far_kinds": kinds, "score": score, **shortcut}


def metrics_of(outcome: CellOutcome) -> dict:
    """The metrics of the row's score (``score_metrics``), plus every raw number."""
    report = outcome.report.to_dict()
    return {
        **score_metrics(report, outcome.score),
        "id_accuracy": outcome.report.id_accuracy,
        "report": report,
        **outcome.info,
    }


def rescored(cached: dict, row: Row, settings: LabSettings) -> dict | None:
    """A cached cell ranked by the settings' ``test_score`` (a test-time choice in no cache key), or None when the
    cell predates that score (then it runs again)."""
    if not row.test_scored or cached.get("score") == settings.test_score:
        return cached
    if settings.test_score not in cached.get("report", {}).get("scores", {}):
        return None
    return {**cached, **score_metrics(cached["report"], settings.test_score)}


def cell_path(out: Path, split: ProfileSplit, row: Row, seed: int, settings: LabSettings, assets_tag: str = "") -> Path:
    """A cell's cache file; keyed by the split (holdout and data hash), the settings the row uses (so e.g. a new
    threshold reruns verified rows only) and the assets it was built from."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", row.name)
    tag = f"-{assets_tag}" if assets_tag else ""
    name = f"{settings.key(row.uses, row.sampler)}{tag}-seed{seed}.json"
    return out / "cells" / split.profile / split.key / safe / name


def run_cell(
    split: ProfileSplit,
    row: Row,
    seed: int,
    settings: LabSettings,
    out: Path,
    assets: Callable[[], LabAssets],
    *,
    cached_only: bool = False,
) -> dict:
    """Run one cell, or return its cached result; the result is written to ``cell_path`` as JSON."""
    # the tag names the assets; ``assets.tag``, where the caller knows it, spares building them to find a cell
    tag = (getattr(assets, "tag", None) or assets().tag) if row.uses_assets else ""
    path = cell_path(out, split, row, seed, settings, tag)
    labels = {
        "split": split.label,
        "split_name": split.name,
        "kind": row.kind,
        "noise_outliers": row.trains_on_noise(settings),
    }
    if path.is_file() and (cached := rescored(json.loads(path.read_text()), row, settings)) is not None:
        return {**cached, **labels}
    if cached_only:
        raise CellNotRun("not run yet (summary of cached cells only)")
    train, test, ood_sets = LabData.get(split, settings.image_size)
    work = Path(tempfile.mkdtemp(prefix="oodlab-"))
    cache = out / "cache" / split.profile
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        outcome = row.run(Cell(split.profile, seed, settings, train, test, ood_sets, cache, work, assets, split))
        result = {
            "profile": split.profile,
            **labels,
            "split_key": split.key,
            "row": row.name,
            "seed": seed,
            "baseline": row.baseline,
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0,  # one torch thread: an idle core's wall time
            **metrics_of(outcome),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(result, indent=1).encode())
    return result


@dataclass(frozen=True)
class RunOptions:
    """What a ``run_benchmark`` call records and how: one value instead of six keywords, passed through as is."""

    name: str = "results"  # the result files OUT/<name>.{json,md,png} (cells are shared by every name)
    cached_only: bool = False  # summarise the cached cells, run nothing
    versus: tuple[str, LabSettings] | None = None  # (label, other settings): rows also run under them, paired
    against: str | None = None  # a row run too, every other row paired with it by seed
    meta: dict | None = None  # recorded as the results' ``run`` (the code's commit, the protocol)
    log: Callable[[str], None] = print


def _chosen_rows(row_names: list[str], against: str | None) -> tuple[dict[str, Row], list[str]]:
    """Every row and the names to run: each asked row's baseline, the rows, then ``against``; unknown names fail."""
    rows = lab_rows()
    unknown = [r for r in row_names if r not in rows]
    if unknown:
        raise ValueError(f"rows: unknown rows {unknown}; known rows: {', '.join(rows)}")
    if against is not None and against not in rows:
        raise ValueError(f"against: unknown row {against!r}; known rows: {', '.join(rows)}")
    chosen = list(
        dict.fromkeys(
            [b for r in row_names if (b := rows[r].baseline)] + list(row_names) + ([against] if against else [])
        )
    )
    return rows, chosen


def _row_runs(
    row: Row, rows: dict[str, Row], settings: LabSettings, versus: tuple[str, LabSettings] | None
) -> tuple[str | None, list[tuple[str, LabSettings, str | None]]]:
    """The row's twin name (or None) and its cells at one split and seed as (name, settings, baseline): the row,
    then its twin under the ``versus`` settings where they change its cells."""
    twin = twin_name(row, settings, versus) if versus is not None else None
    runs = [(row.name, settings, row.baseline)]
    if twin:  # paired with the baseline's twin, or with the baseline where versus leaves it alone
        assert versus is not None  # a twin is versus' row
        twin_baseline = row.baseline and (twin_name(rows[row.baseline], settings, versus) or row.baseline)
        runs.append((twin, versus[1], twin_baseline))
    return twin, runs


def run_benchmark(
    splits: list[ProfileSplit | str],
    row_names: list[str],
    seeds: list[int],
    settings: LabSettings,
    out: Path,
    assets_for: Callable[[ProfileSplit], Callable[[], LabAssets]],
    options: RunOptions | None = None,
) -> dict:
    """Every (split, seed, row) cell (cached), the results written after each cell; returns the results dict.

    ``splits``: ``ProfileSplit``s, or profile names for their default splits.

    A failing cell is recorded under ``failures`` and the others go on. Each row's baseline is run too.
    ``options.versus`` = (label, other settings): every row whose cells those settings change is also run under
    them, as the row "<row> [<label>]", and paired with it seed by seed (how one setting is ranked against
    another). ``options.against`` = a row that is run too and that every other row is also paired with, seed by
    seed (how one sampler is ranked against another under the same settings). ``options.meta`` (the code's commit,
    the protocol) is recorded in the results file as ``run``.
    """
    o = options or RunOptions()
    log, versus = o.log, o.versus
    rows, chosen = _chosen_rows(row_names, o.against)
    if versus is not None and versus[1].density != settings.density:
        raise ValueError("versus: density changes the generation side (one per run); compare densities in two runs")
    resolved = [s if isinstance(s, ProfileSplit) else ProfileSplit.default(s) for s in splits]
    out.mkdir(parents=True, exist_ok=True)
    cells, failures = [], []
    total, done, t0 = len(resolved) * len(chosen) * len(seeds), 0, time.perf_counter()
    log(f"settings {settings.key()}: {settings.model_dump()}")
    log(f"{total} cells: splits {[s.label for s in resolved]}, seeds {seeds}, rows {chosen}")
    # seeds outermost, then splits: an interrupted run still has every split and row at the first seeds
    for seed in seeds:
        for split in resolved:
            assets = assets_for(split)
            where = f"{split.label}{f' ({split.name})' if split.name else ''}"
            for row_name in chosen:
                done += 1
                row = rows[row_name]
                twin, runs = _row_runs(row, rows, settings, versus)
                for name_, cell_settings, baseline in runs:
                    try:
                        c = run_cell(split, row, seed, cell_settings, out, assets, cached_only=o.cached_only)
                    except Exception as exc:  # one broken row must not lose the others; it is reported
                        failures.append(
                            {
                                "profile": split.profile,
                                "split": split.label,
                                "row": name_,
                                "seed": seed,
                                "error": f"{type(exc).__name__}: {exc}",
                            }
                        )
                        log(f"[{done}/{total}] {where} {name_} seed {seed}: FAILED {failures[-1]['error']}")
                        break  # a row that failed has no twin to pair with
                    cells.append(
                        {
                            **c,
                            "row": name_,
                            "baseline": baseline,
                            **({"twin": twin} if name_ == row_name and twin else {}),
                        }
                    )
                    log(
                        f"[{done}/{total}] {where} {name_} seed {seed}: near FPR95 {100 * c['near_fpr95']:.1f} "
                        f"far FPR95 {100 * c['far_fpr95']:.1f} ID acc {100 * c['id_accuracy']:.1f} "
                        f"({c['seconds']:.0f} s; {time.perf_counter() - t0:.0f} s total)"
                    )
                if not o.cached_only:  # partial results survive an interruption; a summary only writes once
                    write_results(out, settings, cells, failures, o.name, versus, o.against, o.meta)
    return write_results(out, settings, cells, failures, o.name, versus, o.against, o.meta)


def twin_name(row: Row, settings: LabSettings, versus: tuple[str, LabSettings]) -> str | None:
    """The name of ``row`` under the ``versus`` settings, or None where those settings leave its cells as they are."""
    label, other = versus
    return f"{row.name} [{label}]" if settings.key(row.uses, row.sampler) != other.key(row.uses, row.sampler) else None


def write_results(
    out: Path,
    settings: LabSettings,
    cells: list[dict],
    failures: list[dict],
    name: str = "results",
    versus: tuple[str, LabSettings] | None = None,
    against: str | None = None,
    meta: dict | None = None,
) -> dict:
    """OUT/<name>.json (settings, summary, cells without their full reports, failures), <name>.md, <name>.png."""
    from ..plots import plot_ood_gain

    summary = summarise(cells, against) if cells else {}
    run = dict(meta or {})
    results = {
        "run": run,
        "settings": settings.model_dump(),
        "summary": summary,
        "cells": [{k: v for k, v in c.items() if k != "report"} for c in cells],
        "failures": failures,
    }
    if versus is not None:
        results["versus"] = {"label": versus[0], "settings": versus[1].model_dump()}
    if against is not None:
        results["against"] = against
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    (out / f"{name}.md").write_text(results_markdown(settings, summary, failures, run, versus))
    if summary:
        plot_ood_gain(summary, out / f"{name}.png")
    return results
