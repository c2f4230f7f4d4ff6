"""One registry, one runner, one table writer: every experiment family's committed tables come back from
its committed run lines, and every family runs a row end to end on the tiny world."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedalign.lab.cli import build_app
from fedalign.lab.experiments import FAMILIES
from fedalign.lab.jobs import run_family
from fedalign.lab.tables import read_jsonl, write_table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
TINY = {"world": "tiny", "seeds": "0"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_committed_tables_are_made_from_the_committed_run_lines(name, tmp_path):
    fam = FAMILIES[name]
    written = write_table(name, RESULTS / fam.runs, tmp_path)
    committed = [f for f in fam.outputs if (RESULTS / f).exists()]
    assert committed and sorted(p.name for p in written) == sorted(committed)
    for f in committed:
        if f.endswith(".png"):  # pixels depend on matplotlib's build: the plot is checked to exist
            assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert (tmp_path / f).read_bytes() == (RESULTS / f).read_bytes(), f"results/{f} is not its run lines'"


def test_results_holds_generated_tables_and_run_lines_only():
    generated = {f for fam in FAMILIES.values() for f in fam.outputs} | {fam.runs for fam in FAMILIES.values()}
    by_others = {"clipart.md", "clipart_runs", "robustness.md", "gpu", "notes"}  # examples', benchmarks'
    assert {p.name for p in RESULTS.iterdir()} <= generated | by_others
    assert {p.name for p in (RESULTS / "notes").iterdir()} == {"dp_notes.md", "fedcmp_notes.md", "real_notes.md",
                                                            "clipart_tuning.md", "clipart_sweep.md"}


def _invoke(*args):
    return CliRunner().invoke(build_app(), ["experiment", *args])


@pytest.mark.parametrize("args, says", [
    (["table", "fedcpm"], "unknown experiment family 'fedcpm'; known: fedcmp, reliability, dp, world-check"),
    (["run", "dp", "--set", "epsilon=8"], "--set 'epsilon=8': expected KEY=VALUE with KEY one of"),
    (["run", "fedcmp", "--set", "rounds=ten"], "--set rounds=ten: expected an integer"),
    (["run", "reliability", "--set", "variants=unreliable,hard"], "variants: unknown ['hard']"),
    (["run", "fedcmp", "--set", "scenarios=label", "--row", "FedAvgg"], "--row: ['FedAvgg'] is no row of fedcmp"),
])
def test_bad_input_is_one_line_and_runs_nothing(args, says, tmp_path):
    res = _invoke(*args, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path))
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ConfigError") and says in lines[0], res.output
    assert not (tmp_path / "runs").exists()


def _run(name, runs, out, jobs=0, rows=(), **options):
    assert run_family(name, {**TINY, **options}, jobs=jobs, rows=list(rows), runs=runs, out=out) == 0
    return [line for p in sorted(runs.glob("*.jsonl")) for line in read_jsonl(p)]


def test_fedcmp_row_runs_resumes_and_lands_in_the_table(tmp_path):
    opts = dict(scenarios="label", dp_scenario="", silos=3, rounds=1, samples_per_round=16, test_size=16)
    lines = _run("fedcmp", tmp_path / "runs", tmp_path, rows=["FedAvg"], **opts)
    assert [(x["label"], x["scenario"], x["seed"], x["silos"]) for x in lines] == [("FedAvg", "label", 0, 3)]
    assert _run("fedcmp", tmp_path / "runs", tmp_path, rows=["FedAvg"], **opts) == lines  # done: not rerun
    # another experiment size is another row
    assert len(_run("fedcmp", tmp_path / "runs", tmp_path, rows=["FedAvg"], **{**opts, "rounds": 2})) == 2
    assert "| FedAvg | 2 |" in (tmp_path / "fedcmp_results.md").read_text()


def test_reliability_rows_run_in_a_worker_process_with_each_silos_rho(tmp_path):
    main = "Fed-CMP reliability: public reference, κ=0.02, ρ smoothed 0.7"
    lines = _run("reliability", tmp_path / "runs", tmp_path, jobs=1, rows=[main, "Fed-CMP reliability off"],
                 variants="unreliable", silos=3, rounds=2, samples_per_round=16, test_size=16)
    assert [x["label"] for x in lines] == ["Fed-CMP reliability off", main]
    assert not any("from" in x for x in lines)  # run here, not copied from the committed table's runs
    rho = lines[1]["rho_curve"][-1]["rho"]
    assert sorted(rho) == ["0", "1", "2"] and all(0.0 <= v <= 1.0 for v in rho.values())
    md = (tmp_path / "reliability.md").read_text()
    assert f"| {main} | 1 |" in md and (tmp_path / "reliability_rho.png").exists()


def test_dp_free_form_configuration_runs_once_with_its_privacy_plan(tmp_path):
    cfg = {"name": "tiny DP FedAvg", "strategy": "fedavg", "eps": 8, "batch_size": 8, "physical_batch_size": 4,
           "lr": 3e-3}
    opts = dict(scenarios="label", silos=3, rounds=1, samples_per_round=24, test_size=16, config=json.dumps(cfg))
    lines = _run("dp", tmp_path / "runs", tmp_path, **opts)
    assert len(lines) == 1
    line = lines[0]
    assert line["config"] == cfg and line["data"]["samples_per_round"] == 24
    assert line["epsilon"] <= 8 and line["sigma"] > 0
    assert line["nll_cut"] == pytest.approx(line["nll_no_image"] - line["nll"])
    renamed = json.dumps({**cfg, "name": "the same run by another name"})
    assert _run("dp", tmp_path / "runs", tmp_path, **{**opts, "config": renamed}) == lines


def test_world_check_central_run_writes_its_report(tmp_path):
    lines = _run("world-check", tmp_path / "runs", tmp_path, steps=3, train_size=16, test_size=8, batch_size=4)
    assert [(x["kind"], x["seed"]) for x in lines] == [("central", 0)]
    report = json.loads((tmp_path / "world_check.json").read_text())
    assert report["args"]["seeds"] == [0] and report["runs"] == [lines[0]["run"]]
    assert report["summary"]["mc_accuracy"] == [lines[0]["run"]["mc_accuracy"], 0.0]
    assert "3 steps of batch 4 on 16 samples" in (tmp_path / "world_check.md").read_text()
