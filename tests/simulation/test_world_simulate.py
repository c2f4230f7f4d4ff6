"""The simulator on the embedded world (tiny spec): the CI configuration of `aggregator simulate`."""

import json

import pytest
import typer
from typer.testing import CliRunner

from simulation.cli import simulate

pytestmark = pytest.mark.slow


def test_tiny_world_unreliable_scenario_end_to_end(tmp_path):
    app = typer.Typer()
    app.command()(simulate)
    out = tmp_path / "sim"
    res = CliRunner().invoke(app, [
        "--scenario", "unreliable", "--world", "tiny", "--silos", "3", "--rounds", "2", "--n-unreliable", "1",
        "--samples-per-round", "16", "--test-size", "24", "--strategy", "fedcmp", "--rank", "4",
        "--reliability", "blend", "--sum", "secagg", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    final = json.loads((out / "final.json").read_text())
    run = final["runs"][0]
    assert final["secure_sum"].startswith("secagg")
    assert final["strategy"] == "fedcmp(rank=4,reliability=blend)"
    for key in ("nll", "mc_accuracy", "presence_f1", "upload_bytes_per_silo_per_round"):
        assert isinstance(final[key], float), key
    assert run["upload_bytes_per_silo_per_round"] == run["upload_bytes_per_silo_per_round_formula"]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [0, 1, 2]
    assert 0.0 <= recs[-1]["mean_reliability"] <= 1.0
    assert (out / "curves.png").stat().st_size > 1000
