"""CLI fit/sample in-process against a real Redis, over the API, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from oodsynth.cli import app
from oodsynth.cli import core as cli_core
from oodsynth.client import OodsynthClient
from oodsynth.state.fits import FitRegistry
from oodsynth.state.samples import SampleRegistry, StoredSample
from tests.helpers.toy_banks import toy_bank

SAMPLER = "inverse_rejection"
runner = CliRunner()


def write_bank(path, n_classes=3, n_per_class=30, dim=12, seed=0, nan=False):
    bank = toy_bank(n_classes, n_per_class, dim, seed=seed, names=["ant", "bee", "cat"][:n_classes])
    if nan:  # written raw: FeatureBank refuses to hold NaN, the CLI must refuse to read it
        bank.features[5, 0] = np.nan
    np.savez(path, features=bank.features, labels=bank.labels, anchors=bank.anchors, class_names=bank.class_names)
    return path


@pytest.fixture
def bank_path(tmp_path):
    return write_bank(tmp_path / "bank.npz")


def test_fit_then_sample_in_process(redis_url, bank_path, tmp_path):
    r = runner.invoke(app, ["fit", str(bank_path), "--name", "cli", "--density", "gaussian_diagonal"])
    assert r.exit_code == 0, r.output
    assert "fit 'cli': gaussian_diagonal, 3 classes, dim 12, 90 bank vectors" in r.stdout
    import redis

    client = redis.Redis.from_url(redis_url)
    assert FitRegistry(client).list() == ["cli"]

    out = tmp_path / "sample.npz"
    r = runner.invoke(
        app,
        [
            "sample",
            "--fit",
            "cli",
            "--method",
            SAMPLER,
            "--n-per-class",
            "4",
            "--classes",
            "cat,0",
            "--seed",
            "5",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    stored = StoredSample.load(out)
    assert stored.vectors.shape == (8, 12) and stored.vectors.dtype == np.float32
    assert stored.class_index.tolist() == [2] * 4 + [0] * 4
    assert stored.class_names == ["ant", "bee", "cat"] and stored.seed == 5 and stored.fit_name == "cli"
    np.testing.assert_allclose(np.linalg.norm(stored.vectors, axis=1), 0.38, rtol=1e-4)
    # The same sample is kept in Redis for /generate.
    again = SampleRegistry(client).get(stored.sample_id)
    np.testing.assert_array_equal(again.vectors, stored.vectors)

    # Same seed, same vectors.
    out2 = tmp_path / "again.npz"
    r = runner.invoke(
        app,
        [
            "sample",
            "--fit",
            "cli",
            "--method",
            SAMPLER,
            "--n-per-class",
            "4",
            "--classes",
            "cat",
            "--classes",
            "0",
            "--seed",
            "5",
            "--out",
            str(out2),
        ],
    )
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(StoredSample.load(out2).vectors, stored.vectors)


SAMPLE = ["sample", "--fit", "cli", "--method", SAMPLER, "--n-per-class", "2"]


@pytest.mark.parametrize(
    "args, field",
    [
        (["fit", "{nan}", "--name", "x"], "bank.features"),
        (["fit", "{missing}", "--name", "x"], "bank"),
        (["fit", "{bank}", "--name", "x", "--density", "cauchy"], "density"),
        (["fit", "{bank}", "--name", "a/b"], "name"),
        (["fit", "{bank}", "--name", "cli"], "name"),
        (["sample", "--fit", "nope", "--method", SAMPLER, "--n-per-class", "2", "--out", "{out}"], "fit"),
        (["sample", "--fit", "cli", "--method", "nope", "--n-per-class", "2", "--out", "{out}"], "method"),
        (["sample", "--fit", "cli", "--method", SAMPLER, "--n-per-class", "0", "--out", "{out}"], "n_per_class"),
        ([*SAMPLE, "--classes", "dog", "--out", "{out}"], "classes[0]"),
        ([*SAMPLE, "-p", "bogus=1", "--out", "{out}"], "params.bogus"),
        ([*SAMPLE, "-p", "novalue", "--out", "{out}"], "params"),
        ([*SAMPLE, "--out", "{nodir}"], "out"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(redis_url, bank_path, tmp_path, args, field):
    paths = {
        "bank": bank_path,
        "nan": write_bank(tmp_path / "nan.npz", nan=True),
        "missing": tmp_path / "missing.npz",
        "out": tmp_path / "s.npz",
        "nodir": tmp_path / "no" / "s.npz",
    }
    assert runner.invoke(app, ["fit", str(bank_path), "--name", "cli"]).exit_code == 0
    r = runner.invoke(app, [a.format(**paths) for a in args])
    assert r.exit_code == 2, (args, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), (args, r.stderr)
    assert lines[0].count(f"{field}:") == 1, r.stderr  # the field is named once, not twice
    assert "Traceback" not in r.output


def test_fit_and_sample_over_the_api(redis_url, bank_path, tmp_path, monkeypatch):
    from services.embed_sampler.app import create_app

    with TestClient(create_app()) as http:
        monkeypatch.setattr(cli_core, "_api_client", lambda url: OodsynthClient(url, http=http))
        r = runner.invoke(app, ["fit", str(bank_path), "--name", "remote", "--api", "http://testserver"])
        assert r.exit_code == 0, r.output
        out = tmp_path / "remote.npz"
        r = runner.invoke(
            app,
            [
                "sample",
                "--fit",
                "remote",
                "--method",
                SAMPLER,
                "--n-per-class",
                "3",
                "--classes",
                "bee",
                "--out",
                str(out),
                "--api",
                "http://testserver",
            ],
        )
        assert r.exit_code == 0, r.output
        stored = StoredSample.load(out)
        assert stored.vectors.shape == (3, 12) and stored.class_index.tolist() == [1, 1, 1]
        assert np.isnan(stored.diagnostics["knn_distance"]).all()
        r = runner.invoke(
            app,
            [
                "sample",
                "--fit",
                "remote",
                "--method",
                SAMPLER,
                "--n-per-class",
                "3",
                "--classes",
                "wasp",
                "--out",
                str(out),
                "--api",
                "http://testserver",
            ],
        )
        assert r.exit_code == 2 and r.stderr.startswith("error: classes[0]:"), r.output
