"""The simulator: CLI outputs on the toy scenario, secure vs plain sums, references, refusals."""

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from fedalign.protocol.errors import ConfigError, InsecureModeRefused
from fedalign.fedcmp.strategies import FedAvg, make_strategy
from fedalign.lab.choices import build_strategy, make_sum
from fedalign.lab.cli import simulate
from fedalign.lab.runner import centralized, local_only, simulate_problem
from fedalign.lab.scenarios import ProblemOptions, build_problem
from fedalign.lab.sums import PLAIN_LABEL, crypto_secure_sum, plain_sum_insecure


def _app():
    app = typer.Typer()
    app.command()(simulate)
    return app


def test_cli_tiny_run_writes_metrics_final_and_png(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(
        _app(),
        ["--scenario", "toy", "--silos", "3", "--rounds", "3", "--strategy", "fedcmp", "--rank", "4",
         "--seeds", "0,1", "--sum", "plain", "--allow-insecure-plain-sums", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    final = json.loads((out / "final.json").read_text())
    assert final["secure_sum"] == PLAIN_LABEL and final["strategy"] == "fedcmp(rank=4)"
    assert [r["seed"] for r in final["runs"]] == [0, 1]
    # bytes: phase 0 P (24×4) + phase 1 A (4×16), the default reliability's ρA (4×16) and ρ, bias 24, Σw; float32;
    # the last of the 3 rounds also carries the flushed residual (24×16), so the mean per round adds a third of it
    assert final["upload_bytes_per_silo_per_round"] == 4 * (24 * 4 + 4 * 16 + 4 * 16 + 1 + 24 + 1) + 4 * 24 * 16 / 3
    for run in final["runs"]:
        assert run["upload_bytes_per_silo_per_round"] == run["upload_bytes_per_silo_per_round_formula"]
    assert final["nll"] == pytest.approx(sum(r["nll"] for r in final["runs"]) / 2)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(x["seed"], x["round"]) for x in lines] == [(s, r) for s in (0, 1) for r in range(4)]
    assert all(x["orth_error"] < 1e-5 for x in lines if x["round"] > 0)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # training helped: the toy's loss went down
    assert lines[3]["nll"] < lines[0]["nll"]


def test_cli_refuses_plain_sums_without_flag(tmp_path):
    res = CliRunner().invoke(_app(), ["--scenario", "toy", "--sum", "plain", "--out", str(tmp_path / "o")])
    assert res.exit_code == 10  # insecure mode refused (common/cli_errors.py)
    assert "InsecureModeRefused" in res.output and "Traceback" not in res.output
    with pytest.raises(InsecureModeRefused):
        make_sum("plain", clip=1.0, allow_insecure_plain_sums=False)


@pytest.mark.parametrize("args, says", [
    (["--corruption", "2"], "corrupt_fraction must lie in [0.0, 1.0]"),
    (["--scenario-option", "colour=red"], "--scenario-option 'colour=red'"),
])
def test_cli_bad_scenario_input_is_one_line_and_writes_nothing(tmp_path, args, says):
    out = tmp_path / "o"
    res = CliRunner().invoke(_app(), ["--scenario", "unreliable", "--world", "tiny", "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert lines == [next(x for x in lines if x.startswith("error: ConfigError"))] and says in lines[0]
    assert not out.exists()


def test_secagg_sums_match_plain_up_to_quantization():
    prob = build_problem("toy", ProblemOptions(n_silos=3, seed=2))
    strat = make_strategy("fedcmp", rank=3, reliability="blend")
    plain = simulate_problem(prob, strat, 2, secure_sum=plain_sum_insecure)
    secure = simulate_problem(prob, make_strategy("fedcmp", rank=3, reliability="blend"), 2,
                              secure_sum=crypto_secure_sum("secagg", clip=8.0), secure_sum_label="secagg")
    for n in plain.params:
        assert torch.allclose(plain.params[n], secure.params[n], atol=1e-5)
    assert secure.final["secure_sum"] == "secagg"


def test_oracle_local_only_and_centralized_references():
    prob = build_problem("toy", ProblemOptions(n_silos=4, seed=1, n_unreliable=1))
    assert prob.unreliable == (3,)
    good = simulate_problem(prob, FedAvg(), 4, silos=[0, 1, 2])
    allsilos = simulate_problem(prob, FedAvg(), 4)
    assert good.final["n_silos"] == 3
    assert good.final["nll"] < allsilos.final["nll"]  # the bad silo fits a wrong map
    loc = local_only(prob, 4)
    cen = centralized(prob, 4)
    assert loc.final["strategy"] == "local-only" and cen.final["strategy"] == "centralized"
    assert cen.final["nll"] < loc.final["nll"]
    # the best single silo is one silo's own run, the lowest NLL of them; the mean is over all
    per = [s["nll"] for s in loc.final["per_silo"]]
    assert len(per) == 4 and loc.final["best_silo_nll"] == min(per) == per[loc.final["best_silo"]]
    assert loc.final["nll"] == pytest.approx(sum(per) / 4)
    alone = simulate_problem(prob, FedAvg(), 4, silos=[loc.final["best_silo"]])
    assert alone.final["nll"] == pytest.approx(loc.final["best_silo_nll"])


def test_dp_defaults_for_fedcmp_and_option_errors():
    s = build_strategy("fedcmp", dp=True)  # measured DP defaults (results/notes/dp_notes.md)
    assert s.config.error_feedback is True and s.config.beta == 0.5 and s.config.reliability == "off"
    assert build_strategy("fedcmp", dp=True, beta=0.3).config.beta == 0.3
    with pytest.raises(ValueError, match="fedcmp only"):
        build_strategy("fedavg", rank=4)


def test_scenario_options_parse_and_reject_unknown_keys():
    from fedalign.lab.cli import parse_scenario_options

    got = parse_scenario_options(["purity=0.8", "unreliable_largest=false", "min_samples=30",
                                  "skew_attribute=colour", "domain_purity=None"])
    assert got == {"purity": 0.8, "unreliable_largest": False, "min_samples": 30, "skew_attribute": "colour",
                   "domain_purity": None}
    for bad in ("purity", "colour=red", "counts=1"):
        with pytest.raises(ConfigError, match="--scenario-option"):
            parse_scenario_options([bad])


def test_reference_reliability_on_the_toy_reports_each_silos_rho_and_finds_the_bad_one():
    from fedalign.lab.runner import attach_reference

    prob = build_problem("toy", ProblemOptions(n_silos=4, seed=1, n_unreliable=1))
    strat = make_strategy("fedcmp", rank=4, reliability="reference", kappa=0.1)
    res = simulate_problem(prob, strat, 4)
    rhos = [r["rho"] for r in res.records if "rho" in r]
    assert len(rhos) == 4 and all(set(r) == {"0", "1", "2", "3"} for r in rhos)
    # the silo fitting a wrong map agrees less with the coordinator's clean update in every round
    assert all(r["3"] < min(r["0"], r["1"], r["2"]) for r in rhos)
    off = simulate_problem(prob, make_strategy("fedcmp", rank=4, reliability="off"), 4)
    assert "rho" not in off.records[-1]
    assert res.final["nll"] < off.final["nll"]

    class NoPublicSet:
        pass

    with pytest.raises(ConfigError, match="no public set"):
        attach_reference(make_strategy("fedcmp", reliability="reference"), NoPublicSet())


def test_cli_reference_reliability_logs_and_plots_each_silos_rho(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(
        _app(),
        ["--scenario", "toy", "--silos", "4", "--n-unreliable", "1", "--rounds", "3", "--strategy", "fedcmp",
         "--rank", "4", "--reliability", "reference", "--kappa", "0.1", "--rho-floor", "0.05", "--rho-smoothing", "0.5",
         "--sum", "plain",
         "--allow-insecure-plain-sums", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    final = json.loads((out / "final.json").read_text())
    assert final["strategy"] == "fedcmp(rank=4,kappa=0.1,rho_floor=0.05,rho_smoothing=0.5)"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r["rho"]) for r in recs if r["round"] > 0] == [["0", "1", "2", "3"]] * 3
    assert (out / "reliability.png").stat().st_size > 1000
    res = CliRunner().invoke(_app(), ["--scenario", "toy", "--rounds", "1", "--sum", "plain", "--reliability", "off",
                                      "--allow-insecure-plain-sums", "--out", str(tmp_path / "off")])
    assert res.exit_code == 0 and not (tmp_path / "off" / "reliability.png").exists()
def test_cli_dp_world_run_reports_no_image_baseline_and_derived_noise(tmp_path):
    """final.json holds the no-image baseline beside the result, and the DP plan σ derived from ε."""
    out = tmp_path / "dp"
    res = CliRunner().invoke(
        _app(),
        ["--scenario", "label", "--world", "tiny", "--silos", "3", "--rounds", "1", "--samples-per-round", "24",
         "--test-size", "16", "--strategy", "fedavg", "--dp", "--dp-epsilon", "4", "--batch-size", "8",
         "--physical-batch-size", "4", "--sum", "plain", "--allow-insecure-plain-sums", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "DP plan: noise multiplier" in res.output and "derived from the budget" in res.output
    final = json.loads((out / "final.json").read_text())
    run = final["runs"][0]
    for key in ("nll_no_image", "mc_accuracy_no_image", "nll_cut_vs_no_image"):
        assert isinstance(run[key], float) and key in final
    assert run["nll_cut_vs_no_image"] == pytest.approx(1 - run["nll"] / run["nll_no_image"])
    plan = run["dp_plan"]
    assert plan["derived"] and plan["epsilon"] <= 4.0 and plan["sample_rate"] == pytest.approx(8 / 24)


def test_result_keeps_final_silo_states_and_weights_for_the_residual_probe():
    """The dp family's residual probe (fedalign.lab.experiments.dp.residual_probe) reads each silo's error-feedback residual after the last round."""
    prob = build_problem("toy", ProblemOptions(n_silos=3, seed=2))
    # without the flush: with it, the final round sends the residuals and resets them to 0
    res = simulate_problem(prob, make_strategy("fedcmp", rank=2, reliability="off", error_feedback=True,
                                               flush=False), 2)
    assert len(res.silo_states) == 3 and len(res.last_weights) == 3
    assert all(0 < w <= 1 for w in res.last_weights)
    matrices = [n for n, t in res.params.items() if t.ndim == 2]
    for s in res.silo_states:  # rank 2 cannot carry a whole update: every silo keeps a non-zero residual
        assert sorted(k for k in s if k.endswith("/e")) == sorted(f"{n}/e" for n in matrices)
        assert all(float(s[f"{n}/e"].norm()) > 0 for n in matrices)
    assert simulate_problem(prob, FedAvg(), 1).silo_states == [{}, {}, {}]


def test_the_lab_app_has_the_simulate_subcommand_the_readme_names(tmp_path):
    """README: `fedalign-lab simulate --scenario ...`; a one-command typer app once swallowed the
    subcommand ("Got unexpected extra argument (simulate)")."""
    from fedalign.lab.cli import build_app

    res = CliRunner().invoke(build_app(), ["simulate", "--scenario", "toy", "--silos", "3", "--rounds", "1",
                                           "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "final.json").read_text())["rounds"] == 1


def test_an_experiment_file_sets_options_and_the_command_line_overrides_it(tmp_path):
    from fedalign.lab.cli import build_app

    exp = tmp_path / "exp.toml"
    exp.write_text('scenario = "toy"\nsilos = 3\nrounds = 4\nstrategy = "fedavg"\nseeds = [0, 1]\n'
                   f'sum = "plain"\nallow-insecure-plain-sums = true\nout = "{tmp_path / "o"}"\n')
    res = CliRunner().invoke(build_app(), ["simulate", "--config", str(exp), "--rounds", "2"])
    assert res.exit_code == 0, res.output
    final = json.loads((tmp_path / "o" / "final.json").read_text())
    assert (final["scenario"], final["strategy"], final["rounds"], final["seeds"]) == ("toy", "fedavg", 2, [0, 1])
    assert final["secure_sum"] == PLAIN_LABEL


@pytest.mark.parametrize("body, says", [
    ("roundz = 3\n", "unknown key 'roundz'"),
    ('rounds = "many"\n', "rounds = 'many'"),
    ("rounds = [1, 2]\n", "expected one value"),
    ("rounds = \n", "not valid TOML"),
])
def test_a_bad_experiment_file_is_one_line_naming_the_file_and_key(tmp_path, body, says):
    from fedalign.lab.cli import build_app

    exp = tmp_path / "exp.toml"
    exp.write_text('scenario = "toy"\n' + body)
    res = CliRunner().invoke(build_app(), ["simulate", "--config", str(exp), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert str(exp) in res.output and says in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_the_shipped_experiment_files_name_only_real_options():
    """Every examples/experiments/*.toml parses against the command (a renamed option fails here)."""
    from pathlib import Path

    from fedalign.lab import cli

    seen = []
    orig = cli.run_simulation
    try:
        cli.run_simulation = lambda **kw: seen.append(kw)
        for f in sorted((Path(__file__).parents[2] / "examples" / "experiments").glob("*.toml")):
            res = CliRunner().invoke(cli.build_app(), ["simulate", "--config", str(f)])
            assert res.exit_code == 0, (f, res.output)
    finally:
        cli.run_simulation = orig
    assert len(seen) >= 2 and {kw["scenario"] for kw in seen} >= {"toy", "domain"}
