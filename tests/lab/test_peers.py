"""The lab's peer rows on digits, tiny: each runs end to end, paired with CE, at the image rows' budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from oodsynth.lab import LabSettings, RunOptions, lab_rows, run_benchmark
from oodsynth.lab.peers import POSTHOC_PARAMS, peer_rows
from oodsynth.lab.settings import LAB_SCORES

# digits: 1,010 training images in 8 classes; outlier_ratio 0.032 gives 4 outliers per class
SETTINGS = LabSettings(width=4, epochs=2, min_steps=0, batch_size=32, ood_batch_size=16, outlier_ratio=0.032)


def test_peer_rows_are_registered_with_their_kinds_and_keys():
    rows = lab_rows()
    names = [r.name for r in peer_rows()]
    assert names[:5] == ["vos", "npos", "mixup", "cutmix", "noise+cutmix"]
    assert lab_rows()["noise+cutmix"].noise_outliers  # no far credit on the noise set
    assert {"posthoc:msp", "posthoc:maxlogit", "posthoc:energy", "posthoc:mahalanobis"} <= set(names)
    assert {"posthoc:knn@k1", "posthoc:vim", "posthoc:react@percentile0.8"} <= set(names)
    for name in names:
        row = rows[name]
        assert row.baseline == "ce" and not row.uses_assets and not row.needs_decoder
        assert row.kind == ("posthoc" if name.startswith("posthoc:") else "peer")
    # a trained peer's cells change with the outlier settings, a post-hoc one's only with the CE model's
    for name, moves in (("vos", True), ("mixup", True), ("posthoc:vim", False)):
        row = rows[name]
        assert (SETTINGS.key(row.uses) != SETTINGS.model_copy(update={"beta": 1.0}).key(row.uses)) is moves
        assert SETTINGS.key(row.uses) != SETTINGS.model_copy(update={"width": 8}).key(row.uses)


@pytest.mark.slow
def test_every_peer_row_runs_end_to_end_on_the_row_budget(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        names = ["vos", "npos", "mixup", "cutmix", "posthoc:energy", "posthoc:msp", "posthoc:knn@k1", "posthoc:vim"]
        names += ["posthoc:energy+knn@k1", "noise+cutmix"]
        results = run_benchmark(
            ["digits"],
            names,
            [0],
            SETTINGS,
            tmp_path,
            lambda split: lambda: pytest.fail("peer rows need no generation assets"),
            RunOptions(log=lambda line: None),
        )
        # a test-time score is no cache key: the cached trained cells are ranked by it, nothing runs again
        written = {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").rglob("*.json")}
        rescored = run_benchmark(
            ["digits"],
            ["mixup", "vos"],
            [0],
            SETTINGS.model_copy(update={"test_score": "energy+knn"}),
            tmp_path,
            lambda split: lambda: pytest.fail("no cell runs again"),
            RunOptions(log=lambda line: None),
        )
        assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").rglob("*.json")} == written
    finally:
        torch.set_num_threads(threads)
    assert results["failures"] == [] and rescored["failures"] == []
    cells = {c["row"]: c for c in results["cells"]}
    again = {c["row"]: c for c in rescored["cells"]}
    assert cells["mixup"]["score"] == SETTINGS.test_score == "knn" and again["mixup"]["score"] == "energy+knn"
    assert again["ce"]["score"] == "energy" and again["ce"]["near_fpr95"] == cells["ce"]["near_fpr95"]
    for row in ("mixup", "vos"):
        (cell_file,) = (tmp_path / "cells" / "digits").glob(f"*/{row}/*.json")
        scores = json.loads(cell_file.read_text())["report"]["scores"]
        assert set(scores) == set(LAB_SCORES) | {"energy", "phi"}
        near = [m["fpr95"] for name, m in scores["energy+knn"].items() if name.startswith("near:")]
        assert again[row]["near_fpr95"] == pytest.approx(np.mean(near)) != cells[row]["near_fpr95"]
    assert list(cells) == ["ce", *names]
    for c in cells.values():
        assert 0 <= c["near_fpr95"] <= 1 and 0 <= c["far_auroc"] <= 1 and c["id_accuracy"] > 0.3
    # the image peers get as many outliers as the noise and decoded rows; the virtual ones as many per step
    assert cells["mixup"]["n_outliers"] == cells["cutmix"]["n_outliers"] == cells["noise+cutmix"]["n_outliers"] == 4 * 8
    assert cells["noise+cutmix"]["n_noise"] == cells["noise+cutmix"]["n_mixed"] == 16
    assert cells["vos"]["virtual_per_step"] == cells["npos"]["virtual_per_step"] == 16
    # the post-hoc rows score the ce row's own model: its energy score gives the ce row's numbers exactly
    for metric in ("near_fpr95", "near_auroc", "far_fpr95", "far_auroc", "id_accuracy"):
        assert cells["posthoc:energy"][metric] == pytest.approx(cells["ce"][metric], abs=1e-9), metric
    assert cells["posthoc:msp"]["near_auroc"] != cells["posthoc:energy"]["near_auroc"]
    assert cells["posthoc:knn@k1"]["detector_params"] == POSTHOC_PARAMS["knn"] == {"k": 1}
    # trained peers change the model: the same seed's CE and VOS differ (VOS draws from epoch 1 of 2)
    assert cells["vos"]["near_auroc"] != cells["ce"]["near_auroc"]
