"""The OOD lab: one cell (split, row, seed) of the OOD-gain benchmark.

Every default of the project is chosen by measured OOD gain. A *row* is one
way of building a detector; a *cell* trains it with one seed and measures it
on the profile's near-OOD (held-out classes) and far-OOD sets (mean over the
far sets): FPR95 and AUROC of its score. Rows are paired by seed with a
baseline row (``ce`` for most): same seed = same initial weights and the
same ID batches, so a per-seed difference isolates what the outliers did.
Every row trained end to end is scored by energy and by each of
``LAB_SCORES`` (feature-space and fused detectors) and ranked by the
settings' ``test_score``, a test-time choice made on the dev splits.

A split (``oodsynth.data.ProfileSplit``) is a profile with its held-out
classes; every cache key (assets, pools, cells) names it. The generation side
(text-aligned encoder, class-density fit, trained decoder) is trained once per
split and cached (``LabAssets``); seeds
vary the outlier sampling, the decoding noise and the detector training. The
detector is always trained end to end, CE + beta * L_ood through the whole
network (``train_ood``), never as a head on frozen features.

Adding a row is one entry in ``rows.lab_rows`` (or ``peers.peer_rows``, or one sampler in
``oodsynth.samplers.SAMPLERS``: its decoded, verified and feature-space rows follow).

Modules: ``settings`` (settings and cache keys), ``protocol`` (the splits file), ``assets`` (a split's encoder,
fit and decoder), ``pools`` (decoded outliers), ``cells`` (what every row runs on, and ``Row``), ``rows`` and
``peers`` (the rows), ``runner`` (cells cached and run), ``report`` (paired statistics, markdown). Imports
``training``, ``offline_decoder``, ``plots`` and the layers below them.
"""

from ..training.outlier_mix import smooth_noise
from .assets import LabAssets, fit_assets, fit_path, profile_assets, train_local_assets
from .cells import Cell, CellNotRun, CellOutcome, LabData, Row, decoded_inliers, pretrained_detector
from .pools import DecodedPool, decoded_inlier_pool, decoded_pool, pool_path
from .report import METRICS, markdown_table, paired_deltas, summarise
from .rows import DECODED_RECIPE, DEFAULT_ROW, feature_outliers_available, lab_rows
from .runner import RunOptions, cell_path, metrics_of, run_benchmark, run_cell, twin_name, write_results
from .settings import FROM_SCRATCH, QUICK, LabSettings

__all__ = [
    "Cell",
    "CellNotRun",
    "CellOutcome",
    "DECODED_RECIPE",
    "DEFAULT_ROW",
    "DecodedPool",
    "FROM_SCRATCH",
    "LabAssets",
    "LabData",
    "LabSettings",
    "METRICS",
    "QUICK",
    "Row",
    "RunOptions",
    "cell_path",
    "decoded_inlier_pool",
    "decoded_inliers",
    "decoded_pool",
    "feature_outliers_available",
    "fit_assets",
    "fit_path",
    "lab_rows",
    "markdown_table",
    "metrics_of",
    "paired_deltas",
    "pool_path",
    "pretrained_detector",
    "profile_assets",
    "run_benchmark",
    "run_cell",
    "smooth_noise",
    "summarise",
    "train_local_assets",
    "twin_name",
    "write_results",
]
