"""The decoder quality gate's verdict and how a pooled report states it (no decoder trained here)."""

from __future__ import annotations

from oodsynth.lab import LabSettings
from oodsynth.lab.runner import write_results
from oodsynth.offline_decoder.gate import QUALITY_GATE, gate_line, gate_verdict

PASSING = {
    "anchor_accuracy": 1.0,
    "midpoint_either": 0.95,
    "reconstruction_median_id_percentile": 44.8,
    "real_median_id_percentile": 55.0,
}


def test_every_figure_must_reach_its_bound():
    assert gate_verdict(PASSING) == {"passed": True, "failed": {}, "gate": QUALITY_GATE}
    at_bounds = {**PASSING, **QUALITY_GATE}
    assert gate_verdict(at_bounds)["passed"]
    weak = {**PASSING, "anchor_accuracy": 0.68, "reconstruction_median_id_percentile": 3.3}
    verdict = gate_verdict(weak)
    assert not verdict["passed"]
    assert verdict["failed"] == {"anchor_accuracy": [0.68, 0.95], "reconstruction_median_id_percentile": [3.3, 30.0]}
    missing = {k: v for k, v in PASSING.items() if k != "midpoint_either"}
    assert set(gate_verdict(missing)["failed"]) == {"midpoint_either"}  # an unmeasured figure does not pass
    assert gate_verdict({**PASSING, "midpoint_either": float("nan")})["failed"]


def test_the_pooled_report_names_each_split_decoder_and_its_verdict(tmp_path):
    decoders = {
        "animals:dog+horse+sheep": {"decoder": "animals-abc", **PASSING, **gate_verdict(PASSING)},
        "digits:eight+nine": {
            "decoder": "digits-def",
            **PASSING,
            "anchor_accuracy": 0.5,
            **gate_verdict({**PASSING, "anchor_accuracy": 0.5}),
        },
    }
    write_results(tmp_path, LabSettings(), [], [], meta={"decoders": decoders})
    md = (tmp_path / "results.md").read_text()
    assert "- animals:dog+horse+sheep (animals-abc): passes the gate: anchors 1.00 (>= 0.95)" in md
    assert "- digits:eight+nine (digits-def): FAILS the gate: anchors 0.50" in md
    assert gate_line(decoders["digits:eight+nine"]).endswith("(>= 30; real 55.0)")
