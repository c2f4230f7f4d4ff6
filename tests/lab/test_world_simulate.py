"""The simulator on the embedded world (tiny spec): the CI configuration of `fedalign-lab simulate`."""

import json

import pytest
import typer
from typer.testing import CliRunner

from fedalign.lab.cli import simulate

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


def test_centralized_reference_takes_its_own_learning_rate():
    """The centralized row may run at its own lr: at the silos' lr it is the same run as with
    that lr given explicitly, and another lr gives another projector."""
    import torch

    from fedalign.protocol.errors import ConfigError
    from fedalign.lab.runner import centralized
    from fedalign.lab.scenarios import ProblemOptions, build_problem

    prob = build_problem("domain", ProblemOptions(n_silos=2, rounds=2, seed=0, samples_per_round=16,
                                                  extra={"world": "tiny", "test_size": 16, "lr": 3e-3}))
    same = centralized(prob, 2)
    given = centralized(prob, 2, lr=3e-3)
    other = centralized(prob, 2, lr=1e-3)
    assert given.final["lr"] == 3e-3 and "lr" not in same.final
    for k in same.params:
        torch.testing.assert_close(same.params[k], given.params[k], rtol=0, atol=0)
    assert any(not torch.equal(same.params[k], other.params[k]) for k in same.params)
    toy = build_problem("toy", ProblemOptions(n_silos=2, seed=0))
    with pytest.raises(ConfigError, match="own lr"):
        centralized(toy, 2, lr=1e-3)


def test_public_gradient_basis_is_shared_orthonormal_and_holds_the_update():
    """subspace_basis "public": U from the loss gradient on the coordinator's public set at θ_t (no
    privacy cost), available from round 0 (the cumulative basis is empty there); a silo's update
    then lies in span(U) for every factored weight."""
    import torch

    from fedalign.protocol.errors import ConfigError
    from fedalign.lab.scenarios import ProblemOptions, build_problem

    prob = build_problem("label", ProblemOptions(n_silos=2, rounds=2, seed=0, samples_per_round=16,
                                                 extra={"world": "tiny", "test_size": 16, "public_size": 24}))
    theta = prob.init_params()
    prob.configure(subspace_rank=2, subspace_basis="cumulative")
    assert prob._basis(theta) is None  # θ_0 − θ_0 = 0: round 0 trains full-rank
    prob.configure(subspace_rank=2, subspace_basis="public")
    basis = prob._basis(theta)
    assert basis and all(theta[k].ndim == 2 for k in basis)
    g = prob._public_gradient(theta)
    for k, U in basis.items():
        assert U.shape == (theta[k].shape[0], 2)
        torch.testing.assert_close(U.T @ U, torch.eye(2), atol=1e-5, rtol=0)
        s = torch.linalg.svdvals(g[k].double())
        captured = (U.double().T @ g[k].double()).norm() ** 2
        assert float(captured) == pytest.approx(float((s[:2] ** 2).sum()), rel=1e-4)  # the top-2 directions
    res = prob.local_update(theta, 0, 0, 0.0)
    for k, U in basis.items():
        resid = res.delta[k] - U @ (U.T @ res.delta[k])
        assert float(resid.norm()) < 1e-5 * max(1.0, float(res.delta[k].norm()))
        assert float(res.delta[k].norm()) > 0
    prob.configure(subspace_basis="spectral")
    with pytest.raises(ConfigError, match="subspace_basis"):
        prob._basis(theta)
