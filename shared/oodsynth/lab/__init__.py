"""The OOD lab: one cell (profile, row, seed) of the OOD-gain benchmark.

Every default of the project is chosen by measured OOD gain. A *row* is one
way of building a detector; a *cell* trains it with one seed and measures it
on the profile's near-OOD (held-out classes) and far-OOD sets (mean over the
far sets): FPR95 and AUROC of its score. Rows are paired by seed with a
baseline row (``ce`` for most): same seed = same initial weights and the
same ID batches, so a per-seed difference isolates what the outliers did.

The generation side (text-aligned encoder, class-density fit, trained
decoder) is trained once per profile and cached (``LabAssets``); seeds
vary the outlier sampling, the decoding noise and the detector training. The
detector is always trained end to end, CE + beta * L_ood through the whole
network (``train_ood``), never as a head on frozen features.

Adding a row is one entry in ``ROW_BUILDERS`` (or one sampler in
``oodsynth.samplers.SAMPLERS``: its decoded, verified and feature-space rows
follow).
"""

from .assets import LabAssets, fit_assets, profile_assets, train_local_assets
from .pools import DecodedPool, decoded_inlier_pool, decoded_pool, smooth_noise
from .report import METRICS, markdown_table, paired_deltas, summarise
from .rows import (
    Cell,
    CellOutcome,
    LabData,
    Row,
    decoded_inliers,
    feature_outliers_available,
    lab_rows,
    pretrained_detector,
)
from .runner import CellNotRun, cell_path, metrics_of, run_benchmark, run_cell, twin_name, write_results
from .settings import FROM_SCRATCH, LATER_FIELDS, PARAMS_WHEN_CACHED, QUICK, LabSettings

__all__ = [
    "Cell",
    "CellNotRun",
    "CellOutcome",
    "DecodedPool",
    "FROM_SCRATCH",
    "LATER_FIELDS",
    "LabAssets",
    "LabData",
    "LabSettings",
    "METRICS",
    "PARAMS_WHEN_CACHED",
    "QUICK",
    "Row",
    "cell_path",
    "decoded_inlier_pool",
    "decoded_inliers",
    "decoded_pool",
    "feature_outliers_available",
    "fit_assets",
    "lab_rows",
    "markdown_table",
    "metrics_of",
    "paired_deltas",
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
