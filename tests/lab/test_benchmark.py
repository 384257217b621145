"""The OOD lab end to end on digits, tiny: cells, pairing, caching, verified pools, results files, density CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from oodsynth.lab import LabSettings, RunOptions, decoded_pool, lab_rows, run_benchmark, summarise
from oodsynth.lab.cells import SHORTCUT_SET

pytestmark = pytest.mark.slow  # trains detectors, encoders and decoded pools

# digits: 1,010 training images in 8 classes, so outlier_ratio 0.032 gives 4 outliers per class
SETTINGS = LabSettings(
    width=4,
    epochs=2,
    min_steps=0,
    batch_size=32,
    ood_batch_size=16,
    outlier_ratio=0.032,
    oversample=2.0,
    max_id_percentile=50.0,
    decode={},
)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_benchmark_cells_pair_cache_and_report(digits_lab_assets, tmp_path, one_thread):
    rows = ["ce", "noise", "decoded:knn_boundary+verified"]
    results = run_benchmark(
        ["digits"],
        rows[1:],
        [0],
        SETTINGS,
        tmp_path,
        lambda p: lambda: digits_lab_assets,
        RunOptions(log=lambda line: None),
    )
    assert results["failures"] == [], [f["error"] for f in results["failures"]]
    cells = {c["row"]: c for c in results["cells"]}
    assert list(cells) == rows  # the baseline ran first, although only the other rows were asked for
    for c in cells.values():
        assert 0 <= c["near_fpr95"] <= 1 and 0 <= c["far_auroc"] <= 1 and c["id_accuracy"] > 0.3
    assert cells["noise"]["n_outliers"] == 4 * 8
    verified = cells["decoded:knn_boundary+verified"]
    assert verified["pool"] == 8 * 8 and 0 < verified["n_outliers"] <= 4 * 8
    assert verified["kept_median_id_percentile"] <= 50.0
    # the decoder-shortcut probe: decoded cells score decoded reconstructions of ID test images against the real
    # ones, outside the near and far pools; rows without decoded images carry no probe
    stored = json.loads(next((tmp_path / "cells").rglob("decoded_knn_boundary+verified/*.json")).read_text())
    report_sets = stored["report"]["scores"][verified["score"]]
    assert SHORTCUT_SET in report_sets and verified["shortcut_auroc"] == report_sets[SHORTCUT_SET]["auroc"]
    assert 0 <= verified["shortcut_auroc"] <= 1 and "shortcut_auroc" not in cells["noise"]
    near = [m["fpr95"] for name, m in report_sets.items() if name.startswith("near:")]
    assert verified["near_fpr95"] == pytest.approx(np.mean(near))
    # paired difference: noise minus CE of the same seed
    d = results["summary"]["digits"]["noise"]["delta_near_fpr95"]
    assert d["n"] == 1 and d["mean"] == pytest.approx(cells["noise"]["near_fpr95"] - cells["ce"]["near_fpr95"])
    # the three result files
    table = (tmp_path / "results.md").read_text()
    assert "| decoded:knn_boundary+verified |" in table and "## digits" in table
    assert "Decoder shortcut:" in table and "decoded:knn_boundary+verified" in table.split("Decoder shortcut:")[1]
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["digits"]["ce"]["n_seeds"] == 1
    assert (tmp_path / "results.png").stat().st_size > 5_000
    # a rerun resumes from the cached cells: same numbers, no cell written again (no training)
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").rglob("*.json")}
    assert len(written) == 3
    again = run_benchmark(
        ["digits"],
        rows,
        [0],
        SETTINGS,
        tmp_path,
        lambda p: lambda: digits_lab_assets,
        RunOptions(log=lambda line: None),
    )
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cells").rglob("*.json")} == written
    assert [c["near_fpr95"] for c in again["cells"]] == [c["near_fpr95"] for c in results["cells"]]


def test_verified_pool_keeps_only_outliers_below_the_threshold(digits_lab_assets, tmp_path, one_thread):
    pool = decoded_pool(digits_lab_assets, "knn_boundary", 1, SETTINGS, tmp_path)
    pct = pool.verification.id_percentile
    assert pool.images.dtype == torch.uint8 and len(pool.images) == 64 and np.isfinite(pct).all()
    threshold = float(np.median(pct))
    keep = pool.choose(4, threshold)
    assert len(keep) > 0 and (pct[keep] <= threshold).all()
    assert all((pool.class_index[keep] == c).sum() <= 4 for c in range(8))
    assert len(pool.choose(4, None)) == 32
    cached = decoded_pool(digits_lab_assets, "knn_boundary", 1, SETTINGS, tmp_path)
    assert torch.equal(cached.images, pool.images)


def test_init_strength_decodes_from_a_real_image_of_the_source_class(digits_lab_assets, tmp_path, one_thread):
    """SDEdit pools: each outlier starts from a real training image of its vector's class (drawn by the seed), so
    at a low strength it stays close to that image; a pool of its own in the cache, keyed only on the decoded
    rows, the noise pool untouched."""
    from oodsynth.lab.pools import source_images

    plain = SETTINGS.model_copy(update={"decode": {"steps": 20}})
    sdedit = plain.model_copy(update={"init_strength": 0.1})  # 2 of 20 steps: the random-weight UNet keeps little
    noise_pool = decoded_pool(digits_lab_assets, "knn_boundary", 1, plain, tmp_path)
    pool = decoded_pool(digits_lab_assets, "knn_boundary", 1, sdedit, tmp_path)
    assert len(list(tmp_path.rglob("decoded-knn_boundary-s1-init0.1-*.pt"))) == 1
    starts = source_images(digits_lab_assets, pool.class_index, 1)
    assert torch.equal(starts, source_images(digits_lab_assets, pool.class_index, 1))  # the seed draws them
    train = digits_lab_assets.split.load("train", 16)
    labels = np.array([int(train.dataset[i][1]) for i in range(len(train))])
    # every start image is a real image of the vector's class: its nearest training image has that label
    x = torch.stack([train.dataset[i][0] for i in range(len(train))]).flatten(1)
    nearest = torch.cdist(starts.flatten(1), x).argmin(1).numpy()
    assert (labels[nearest] == pool.class_index).all()
    # the pool is the library's SDEdit of those starts: OutlierDecoder.decode with init_images and the strength
    from oodsynth.decoding.verification import images_to_tensor
    from oodsynth.lab.pools import _decoder

    assets = digits_lab_assets
    vectors = sdedit.sampler("knn_boundary").sample(assets.fit, len(pool.class_index) // 8, seed=1, bank=assets.bank)
    decode = {"guidance_scale": 3.0, **assets.decode, **sdedit.decode, "output_size": 16}
    seeds = [1_000_003 + i for i in range(len(pool.class_index))]
    expected = _decoder(assets.decoder_dir).decode(vectors.vectors, seeds, init_images=starts, strength=0.1, **decode)
    assert torch.equal((images_to_tensor(expected, 16) * 255).round().to(torch.uint8), pool.images)
    assert not torch.equal(pool.images, noise_pool.images)
    rows = lab_rows()
    assert sdedit.key(rows["decoded:knn_boundary"].uses) != plain.key(rows["decoded:knn_boundary"].uses)
    assert sdedit.key(rows["noise"].uses) == plain.key(rows["noise"].uses)
    assert plain.key() == plain.model_copy(update={"init_strength": 0.0}).key()


def test_sampler_params_draw_their_own_pool_and_key_only_the_rows_that_use_them(
    digits_lab_assets, tmp_path, one_thread
):
    tuned = SETTINGS.model_copy(update={"sampler_params": {"boundary_crossing": {"select": 1, "jitter": 0.0}}})
    default = decoded_pool(digits_lab_assets, "boundary_crossing", 1, SETTINGS, tmp_path)
    pool = decoded_pool(digits_lab_assets, "boundary_crossing", 1, tuned, tmp_path)
    assert len(list(tmp_path.rglob("decoded-boundary_crossing-s1-*.pt"))) == 2  # one cached pool each
    assert not torch.equal(pool.images, default.images)
    assert torch.equal(decoded_pool(digits_lab_assets, "boundary_crossing", 1, tuned, tmp_path).images, pool.images)
    rows = lab_rows()
    for name, changes in (
        ("ce", False),
        ("noise", False),
        ("decoded:boundary_crossing+verified", True),
        ("feature:boundary_crossing", True),
    ):
        row = rows[name]
        assert (SETTINGS.key(row.uses, row.sampler) != tuned.key(row.uses, row.sampler)) is changes, name
    ci = rows["decoded:class_interpolation+verified"]  # another sampler's row: its own parameters did not change
    assert SETTINGS.key(ci.uses, ci.sampler) == tuned.key(ci.uses, ci.sampler)
    assert LabSettings().key() == LabSettings(sampler_params={}).key()  # cells cached before the field stay valid


def test_a_changed_sampler_default_gets_its_own_cells(monkeypatch):
    """A row's key holds its sampler's full parameters, defaults included: when a default changes, the rows of
    that sampler get new cells, asking for the old value explicitly finds the old cells, other rows keep theirs."""
    from pydantic import Field

    from oodsynth.samplers.boundary_crossing import BoundaryCrossingParams, BoundaryCrossingSampler

    rows = lab_rows()
    bc, ci = rows["decoded:boundary_crossing+verified"], rows["decoded:class_interpolation+verified"]
    current = BoundaryCrossingParams().select
    before, ci_key = LabSettings().key(bc.uses, bc.sampler), LabSettings().key(ci.uses, ci.sampler)

    class Other(BoundaryCrossingParams):
        select: int = Field(current + 1, ge=1, le=100_000)

    monkeypatch.setattr(BoundaryCrossingSampler, "Params", Other)  # the default changes
    assert LabSettings().key(bc.uses, bc.sampler) != before
    assert LabSettings(sampler_params={"boundary_crossing": {"select": current}}).key(bc.uses, bc.sampler) == before
    assert LabSettings().key(ci.uses, ci.sampler) == ci_key


def test_every_key_of_a_split_changes_with_its_holdout_alone(tmp_path):
    """Two splits of one profile that differ only in the held-out classes share no cache key: decoder and
    encoder folder, fit, decoded pools, and every row's cells (ce and noise included). The feature bank is
    never cached: it is rebuilt from the split's own training images."""
    from oodsynth.data import ProfileSplit
    from oodsynth.lab import LabAssets, cell_path, fit_path, pool_path
    from oodsynth.offline_decoder.assets import cache_path
    from oodsynth.offline_decoder.training import profile_config

    a, b = ProfileSplit("animals", (4, 7, 8)), ProfileSplit("animals", (0, 2, 5))
    assert a.key != b.key and a == ProfileSplit.parse("animals:dog+horse+sheep")
    assert cache_path(profile_config("animals", a.holdout), tmp_path) != cache_path(
        profile_config("animals", b.holdout), tmp_path
    )
    assert profile_config("animals").key() == profile_config("animals", a.holdout).key()  # the default is a
    assert fit_path(tmp_path, a, "gaussian_full", "e") != fit_path(tmp_path, b, "gaussian_full", "e")
    decoder = tmp_path / "decoder"

    def assets(split):
        return LabAssets(split, None, tmp_path / "enc.pt", None, None, decoder, {})

    assert pool_path(tmp_path, "x-s0", assets(a), SETTINGS, 10) != pool_path(tmp_path, "x-s0", assets(b), SETTINGS, 10)
    for row in lab_rows().values():
        assert cell_path(tmp_path, a, row, 0, SETTINGS, "t") != cell_path(tmp_path, b, row, 0, SETTINGS, "t"), row.name
    # the data hash is in the key: the same holdout over other data (another ID train/test split) is another split
    assert ProfileSplit("animals", (4, 7, 8), seed=1).key != a.key


def test_summary_statistics_are_paired():
    def cell(row, seed, fpr):
        return {
            "profile": "p",
            "row": row,
            "seed": seed,
            "baseline": None if row == "ce" else "ce",
            "seconds": 1.0,
            "near_fpr95": fpr,
            "near_auroc": 0.5,
            "far_fpr95": 0.5,
            "far_auroc": 0.5,
            "id_accuracy": 0.9,
        }

    ce = [0.30, 0.40, 0.50]
    new = [0.25, 0.36, 0.44]  # always 4-6 points better, although the seeds spread 10 points
    s = summarise([cell("ce", i, f) for i, f in enumerate(ce)] + [cell("x", i, f) for i, f in enumerate(new)])
    d = s["p"]["x"]["delta_near_fpr95"]
    diffs = np.subtract(new, ce)
    assert d["mean"] == pytest.approx(diffs.mean()) and d["std"] == pytest.approx(diffs.std(ddof=1))
    assert d["t"] == pytest.approx(diffs.mean() / (diffs.std(ddof=1) / np.sqrt(3)))
    assert d["t"] < -2 and s["p"]["x"]["near_fpr95"]["std"] > 0.09


def test_pooled_report_pairs_by_split_and_seed_credits_noise_fairly_and_names_the_best_peer():
    """Cells of two splits x two seeds pool into one row entry; pairs are (split, seed); a noise-trained row's
    far figures leave the noise set out; every row is paired with the best peer (lowest pooled near FPR95)."""
    from oodsynth.lab.report import markdown_table, target_lines

    def cell(row, split, seed, near, kinds, kind="ours", noise=False):
        far = {k: {"fpr95": v, "auroc": 1 - v} for k, v in kinds.items()}
        return {
            "profile": "animals",
            "split": split,
            "split_name": {"animals:a": "test-0", "animals:b": "test-1"}[split],
            "row": row,
            "seed": seed,
            "baseline": None if row == "ce" else "ce",
            "kind": kind,
            "noise_outliers": noise,
            "seconds": 1.0,
            "near_fpr95": near,
            "near_auroc": 1 - near,
            "far_fpr95": float(np.mean(list(kinds.values()))),
            "far_auroc": 1 - float(np.mean(list(kinds.values()))),
            "far_kinds": far,
            "id_accuracy": 0.9,
        }

    pairs = [("animals:a", 0), ("animals:a", 1), ("animals:b", 0), ("animals:b", 1)]
    ce_near, ours_near, noise_near = [0.5, 0.6, 0.7, 0.4], [0.40, 0.52, 0.61, 0.33], [0.55, 0.62, 0.72, 0.45]
    cells = []
    for (split, seed), c, o, n in zip(pairs, ce_near, ours_near, noise_near):
        cells += [
            cell("ce", split, seed, c, {"digits": 0.8, "noise": 0.9, "inverted": 0.7}, kind="baseline"),
            cell("ours", split, seed, o, {"digits": 0.6, "noise": 0.9, "inverted": 0.6}),
            cell("noise", split, seed, n, {"digits": 0.8, "noise": 0.0, "inverted": 0.7}, kind="peer", noise=True),
        ]
    s = summarise(cells)["animals"]
    ours, noise = s["ours"], s["noise"]
    assert ours["n_seeds"] == 4 and ours["n_splits"] == 2
    d = ours["delta_near_fpr95"]
    diffs = np.subtract(ours_near, ce_near)
    assert d["n"] == 4 and d["mean"] == pytest.approx(diffs.mean()) and d["std"] == pytest.approx(diffs.std(ddof=1))
    # the noise row's far figure is (digits + inverted) / 2: the noise set it was trained on earns it nothing
    assert noise["far_fpr95"]["mean"] == pytest.approx(0.75) and noise["delta_far_fpr95"]["mean"] == pytest.approx(0)
    assert ours["far_kinds"]["noise"]["fpr95"]["mean"] == pytest.approx(0.9)
    assert ours["best_peer"] == "noise"
    assert ours["peer_delta_near_fpr95"]["mean"] == pytest.approx(np.mean(np.subtract(ours_near, noise_near)))
    assert set(ours["per_split"]) == {"animals:a", "animals:b"}
    assert ours["per_split_delta"]["animals:a"]["mean"] == pytest.approx(np.mean(diffs[:2]))
    table = markdown_table(summarise(cells), "animals")
    assert "| noise † |" in table and "test-1 (b)" in table and "Δ near FPR95 vs best peer (noise)" in table
    ours_line = next(line for line in table.splitlines() if line.startswith("| ours |"))
    assert "| -12.0 ± 2.2 (t -11.1) |" in ours_line  # ours − noise, paired
    lines = target_lines(summarise(cells), "animals", "ours")
    # near -8.5 (t far below -2.5), far -10, -12 against noise; no post-hoc row ran, which is a miss
    assert [line.split(":")[0] for line in lines] == ["- met", "- met", "- met", "- MISSED"]
    assert "not measured" in lines[3]


def test_the_best_peer_is_paired_with_the_runner_up_and_marked_in_the_table():
    """A recipe that is itself a peer (``noise+cutmix``) must still meet its strongest rival: the best peer is
    paired with the second best, every other row with the best, and the table marks the exception."""
    from oodsynth.lab.report import markdown_table

    def cell(row, seed, near, kind):
        return {
            "profile": "animals",
            "split": "animals:a",
            "split_name": "test-0",
            "row": row,
            "seed": seed,
            "baseline": None if row == "ce" else "ce",
            "kind": kind,
            "noise_outliers": False,
            "seconds": 1.0,
            "near_fpr95": near,
            "near_auroc": 1 - near,
            "far_fpr95": 0.5,
            "far_auroc": 0.5,
            "far_kinds": {},
            "id_accuracy": 0.9,
        }

    near = {"ce": [0.6, 0.7, 0.5], "best": [0.40, 0.45, 0.35], "second": [0.50, 0.52, 0.41], "ours": [0.45] * 3}
    kinds = {"ce": "baseline", "best": "peer", "second": "peer", "ours": "ours"}
    cells = [cell(r, i, v, kinds[r]) for r, vs in near.items() for i, v in enumerate(vs)]
    s = summarise(cells)["animals"]
    assert s["ours"]["best_peer"] == "best" and s["second"]["best_peer"] == "best"
    assert s["best"]["best_peer"] == "second"
    assert s["best"]["peer_delta_near_fpr95"]["mean"] == pytest.approx(np.mean([-0.10, -0.07, -0.06]))
    table = markdown_table(summarise(cells), "animals")
    assert "Δ near FPR95 vs best peer (best)" in table
    best_line = next(line for line in table.splitlines() if line.startswith("| best |"))
    assert "(vs second)" in best_line


def test_rows_registry():
    rows = lab_rows()
    assert list(rows)[:3] == ["ce", "density", "noise"]
    from oodsynth.samplers import SAMPLERS

    for name in SAMPLERS:
        assert rows[f"decoded:{name}"].needs_decoder and rows[f"decoded:{name}+verified"].baseline == "ce"
    with pytest.raises(ValueError, match="rows"):
        run_benchmark(["digits"], ["no-such-row"], [0], SETTINGS, None, None)


def test_evaluate_density_score_cli(digits_lab_assets, tmp_path, one_thread):
    from oodsynth.cli import app

    fit_file = tmp_path / "fit.bin"
    fit_file.write_bytes(digits_lab_assets.fit.to_bytes())
    runner = CliRunner()
    out = tmp_path / "eval.json"
    res = runner.invoke(
        app,
        [
            "evaluate",
            "--score",
            "density",
            "--encoder",
            str(digits_lab_assets.encoder_path),
            "--fit",
            str(fit_file),
            "--dataset",
            "digits",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    scores = json.loads(out.read_text())["scores"]
    assert list(scores) == ["density"]
    assert set(scores["density"]) == {
        "digits:ood",
        "digits:far-animals",
        "digits:far-noise",
        "digits:far-inverted",
        "average",
    }
    assert scores["density"]["digits:far-noise"]["auroc"] > 0.95  # noise is far below every class density
    res = runner.invoke(app, ["evaluate", "--score", "density", "--dataset", "digits"])
    assert res.exit_code == 2 and "encoder" in res.output
    res = runner.invoke(app, ["evaluate", "--score", "mahalanobis", "--dataset", "digits"])
    assert res.exit_code == 2 and "score" in res.output


def test_decoded_inliers_join_the_id_side_with_their_own_labels(digits_lab_assets, tmp_path, one_thread):
    """decoded_inliers: ID features are decoded, re-encoded, and only the ones that stay in their class are used."""
    from oodsynth.lab import Cell, LabData, decoded_inlier_pool, decoded_inliers

    settings = SETTINGS.model_copy(update={"decoded_inliers": 0.032})
    pool = decoded_inlier_pool(digits_lab_assets, 0, settings, tmp_path)
    assert len(pool.images) == 8 * 8 and sorted(set(pool.class_index.tolist())) == list(range(8))
    train, test, ood = LabData.get("digits", settings.image_size)
    cell = Cell("digits", 0, settings, train, test, ood, tmp_path, tmp_path / "work", lambda: digits_lab_assets)
    x, y, info = decoded_inliers(cell)
    faithful = pool.verification.id_class == pool.class_index
    assert info["inlier_faithful_rate"] == pytest.approx(faithful.mean())
    assert (
        len(x)
        == len(y)
        == info["inliers"]
        == sum(min(4, int((faithful & (pool.class_index == c)).sum())) for c in range(8))
    )
    assert x.shape[1:] == (3, settings.image_size, settings.image_size) and 0 <= x.min() and x.max() <= 1
    # the first 4 faithful images per class, labelled with the class they were decoded from and re-encode to
    keep = np.sort(np.concatenate([np.flatnonzero(faithful & (pool.class_index == c))[:4] for c in range(8)]))
    assert y.tolist() == pool.class_index[keep].tolist() == pool.verification.id_class[keep].tolist()
    assert torch.allclose(x, pool.images[torch.from_numpy(keep)].float() / 255)
    # the setting keys the decoded rows' cache, and the control row refuses to run without it
    rows = lab_rows()
    assert settings.key(rows["decoded:knn_boundary"].uses) != SETTINGS.key(rows["decoded:knn_boundary"].uses)
    assert SETTINGS.key(rows["decoded:knn_boundary"].uses) == LabSettings(
        **{k: v for k, v in SETTINGS.model_dump().items() if k != "decoded_inliers"}
    ).key(rows["decoded:knn_boundary"].uses)
    with pytest.raises(ValueError, match="decoded_inliers"):
        rows["inliers"].run(
            Cell("digits", 0, SETTINGS, train, test, ood, tmp_path, tmp_path / "w", lambda: digits_lab_assets)
        )


def test_fine_tune_cells_start_from_one_pretrained_detector_per_seed(tmp_path, one_thread):
    """finetune_epochs: the seed's CE-only detector is trained once, cached, and every row fine-tunes it."""
    from oodsynth.data import ProfileSplit
    from oodsynth.training.classifier import load_ood_classifier

    settings = SETTINGS.model_copy(update={"finetune_epochs": 1, "finetune_lr": 0.02})
    results = run_benchmark(
        ["digits"], ["ce", "noise"], [0], settings, tmp_path, lambda p: lambda: None, RunOptions(log=lambda line: None)
    )
    assert results["failures"] == []
    split = ProfileSplit.default("digits")
    pretrained = list((tmp_path / "cache" / "digits").glob(f"pretrained-{split.key}-s0-*.pt"))
    assert len(pretrained) == 1
    # it is the from-scratch CE detector: the same settings without fine-tuning name the same file
    scratch = SETTINGS.key(frozenset())
    assert pretrained[0].name == f"pretrained-{split.key}-s0-{scratch}.pt"
    clf = load_ood_classifier(pretrained[0], device="cpu")
    assert clf.epoch == 2 and not clf.uses_outliers  # SETTINGS' 2 epochs from scratch
    mtime = pretrained[0].stat().st_mtime_ns
    again = run_benchmark(
        ["digits"], ["ce", "noise"], [1], settings, tmp_path, lambda p: lambda: None, RunOptions(log=lambda line: None)
    )
    assert again["failures"] == [] and pretrained[0].stat().st_mtime_ns == mtime  # seed 0's is reused, not retrained
    assert len(list((tmp_path / "cache" / "digits").glob("pretrained-*.pt"))) == 2
    for c in results["cells"] + again["cells"]:
        assert 0 <= c["near_fpr95"] <= 1 and c["id_accuracy"] > 0.3
    rows = lab_rows()  # fine-tuned image cells are cached apart from from-scratch ones; encoder-based rows are not
    assert settings.key(rows["ce"].uses) != SETTINGS.key(rows["ce"].uses)
    assert settings.key(rows["density"].uses) == SETTINGS.key(rows["density"].uses)
    from oodsynth.lab import FROM_SCRATCH  # the pretrained detector's settings are the fields' defaults

    assert FROM_SCRATCH == {k: LabSettings.model_fields[k].default for k in FROM_SCRATCH}


def test_versus_runs_changed_rows_under_other_settings_and_pairs_them_by_seed(tmp_path, one_thread):
    """--versus: a row whose cells the other settings change runs under them too, as its twin, paired by seed;
    a row they leave alone (ce: no outliers) runs once. --against pairs rows with one row, from the same cells."""
    more = SETTINGS.model_copy(update={"outlier_ratio": 0.064})
    results = run_benchmark(
        ["digits"],
        ["noise"],
        [0, 1],
        SETTINGS,
        tmp_path,
        lambda p: lambda: None,
        RunOptions(log=lambda line: None, versus=("outlier_ratio=0.064", more)),
    )
    assert results["failures"] == []
    cells = {(c["row"], c["seed"]): c for c in results["cells"]}
    assert sorted({row for row, _ in cells}) == ["ce", "noise", "noise [outlier_ratio=0.064]"]
    assert cells["noise", 0]["n_outliers"] == 4 * 8 and cells["noise [outlier_ratio=0.064]", 0]["n_outliers"] == 8 * 8
    noise = results["summary"]["digits"]["noise"]
    diffs = [cells["noise", s]["near_fpr95"] - cells["noise [outlier_ratio=0.064]", s]["near_fpr95"] for s in (0, 1)]
    assert noise["twin"] == "noise [outlier_ratio=0.064]" and noise["twin_delta_near_fpr95"]["n"] == 2
    assert noise["twin_delta_near_fpr95"]["mean"] == pytest.approx(np.mean(diffs))
    twin = results["summary"]["digits"]["noise [outlier_ratio=0.064]"]
    assert twin["baseline"] == "ce" and twin["delta_near_fpr95"]["n"] == 2  # the twin is paired with CE only too
    assert "twin" not in results["summary"]["digits"]["ce"]
    table = (tmp_path / "results.md").read_text()
    assert "| noise | noise [outlier_ratio=0.064] |" in table and "lab settings" in table
    assert json.loads((tmp_path / "results.json").read_text())["versus"]["settings"]["outlier_ratio"] == 0.064
    with pytest.raises(ValueError, match="density"):
        run_benchmark(
            ["digits"],
            ["noise"],
            [0],
            SETTINGS,
            tmp_path,
            lambda p: lambda: None,
            RunOptions(versus=("density=vmf", SETTINGS.model_copy(update={"density": "vmf"}))),
        )

    # --against: every other row paired with one row by seed (from the cached cells); twins are left out of it.
    h2h = run_benchmark(
        ["digits"],
        ["ce"],
        [0, 1],
        SETTINGS,
        tmp_path,
        lambda p: lambda: None,
        RunOptions(
            log=lambda line: None, cached_only=True, name="h2h", versus=("outlier_ratio=0.064", more), against="noise"
        ),
    )
    summary = h2h["summary"]["digits"]
    ce_minus_noise = [cells["ce", s]["near_fpr95"] - cells["noise", s]["near_fpr95"] for s in (0, 1)]
    assert summary["ce"]["against"] == "noise" and summary["ce"]["against_delta_near_fpr95"]["n"] == 2
    assert summary["ce"]["against_delta_near_fpr95"]["mean"] == pytest.approx(np.mean(ce_minus_noise))
    assert "against" not in summary["noise"] and "against" not in summary["noise [outlier_ratio=0.064]"]
    assert "| ce | noise |" in (tmp_path / "h2h.md").read_text() and h2h["against"] == "noise"
    with pytest.raises(ValueError, match="against"):
        run_benchmark(
            ["digits"], ["ce"], [0], SETTINGS, tmp_path, lambda p: lambda: None, RunOptions(against="no-such-row")
        )
    # a summary of cached cells counts the cells not run yet instead of listing them as failures
    partial = run_benchmark(
        ["digits"],
        ["noise"],
        [0, 5],
        SETTINGS,
        tmp_path,
        lambda p: lambda: None,
        RunOptions(log=lambda line: None, cached_only=True, name="partial"),
    )
    assert len(partial["failures"]) == 2 and partial["summary"]["digits"]["noise"]["n_seeds"] == 1
    md = (tmp_path / "partial.md").read_text()
    assert "digits noise: 1" in md and "## failed cells" not in md


def test_the_outlier_mix_keeps_the_count_and_keys_only_the_decoded_rows(digits_lab_assets, tmp_path, one_thread):
    """noise_share and mixing_share replace that share of a decoded row's outliers: the same count in all."""
    mixed = SETTINGS.model_copy(update={"noise_share": 0.25, "mixing_share": 0.25})
    results = run_benchmark(
        ["digits"],
        ["decoded:knn_boundary"],
        [0],
        mixed,
        tmp_path,
        lambda p: lambda: digits_lab_assets,
        RunOptions(log=lambda line: None),
    )
    assert results["failures"] == []
    cell = next(c for c in results["cells"] if c["row"] == "decoded:knn_boundary")
    # 4 outliers per class of 8 classes: 1 smooth noise, 1 cutmix, 2 decoded each
    assert (cell["n_noise"], cell["n_mixed"], cell["n_outliers"]) == (8, 8, 32)
    assert cell["noise_outliers"] is True  # part noise: no far-OOD credit on the noise set
    rows = lab_rows()
    decoded, ce = rows["decoded:knn_boundary"], rows["ce"]
    unmixed = SETTINGS.model_copy(update={"noise_share": 0.0, "mixing_share": 0.0})
    assert mixed.key(decoded.uses) != unmixed.key(decoded.uses)
    mixup = mixed.model_copy(update={"mixing_kind": "mixup"})
    assert mixup.key(decoded.uses) != mixed.key(decoded.uses)
    assert mixed.key(ce.uses) == unmixed.key(ce.uses)  # CE has no outliers to mix
    # no mixing outliers: the kind changes nothing, and the cells cached before the fields existed stay valid
    assert unmixed.model_copy(update={"mixing_kind": "mixup"}).key() == unmixed.key()
    with pytest.raises(ValueError, match="noise_share \\+ mixing_share"):
        LabSettings(noise_share=0.5, mixing_share=0.5)
