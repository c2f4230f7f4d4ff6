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


def test_dp_plan_counts_the_subspace_dimensions_it_noises():
    """With subspace training the plan line's noise/clip uses the coefficients' count (r·n per factored
    weight), not the whole projector's: that is where DP's σ·√d noise lives."""
    from fedalign.lab.scenarios import ProblemOptions, build_problem
    from fedalign.silo.subspace import subspace_numel

    prob = build_problem("label", ProblemOptions(n_silos=2, rounds=2, seed=0, samples_per_round=16,
                                                 extra={"world": "tiny", "test_size": 16, "public_size": 24}))
    dp = dict(noise_multiplier=None, max_grad_norm=1.0, epsilon=8.0, delta=1e-5)
    prob.configure(dp=dp, batch_size=8)
    prob.local_update(prob.init_params(), 0, 0, 0.0)
    full = prob.dp_plan
    assert full.n_params == sum(p.numel() for p in prob.model.projector.parameters())
    prob.configure(dp=dp, subspace_rank=2, subspace_basis="public")
    prob.local_update(prob.init_params(), 0, 0, 0.0)
    sub = prob.dp_plan
    assert sub.n_params == subspace_numel(prob.model.projector, 2) < full.n_params
    assert sub.noise_multiplier == full.noise_multiplier  # the same schedule, fewer noised values


def test_pooled_sampling_charges_every_round_at_the_whole_data_rate():
    """sampling "pooled": each round Poisson-samples the silo's whole data (q = B / all records) for the
    same number of steps as a round's shard; ε composes one pass per round, and at the same budget
    the smaller q buys a smaller σ than one pass over per-round shards."""
    from fedalign.protocol.errors import ConfigError
    from fedalign.lab.scenarios import ProblemOptions, build_problem

    prob = build_problem("domain", ProblemOptions(n_silos=2, rounds=3, seed=0, samples_per_round=16,
                                                  extra={"world": "tiny", "test_size": 16}))
    dp = dict(noise_multiplier=None, max_grad_norm=1.0, epsilon=8.0, delta=1e-5)
    prob.configure(dp=dp, batch_size=8, local_epochs=2.0)
    prob.local_update(prob.init_params(), 0, 0, 0.0)
    shards = prob.dp_plan
    assert (shards.shard_size, shards.sample_rate, shards.steps, shards.passes) == (16, 0.5, 4, 1)
    prob.configure(dp=dp, sampling="pooled")
    theta = prob.init_params()
    for t in range(2):
        prob.local_update(theta, 0, t, 0.0)
    pooled = prob.dp_plan
    assert (pooled.shard_size, pooled.sample_rate, pooled.steps, pooled.passes) == (48, 8 / 48, 4, 3)
    assert pooled.noise_multiplier < shards.noise_multiplier
    acc = prob._trainers[(0, None)].accountant
    assert sorted(acc.passes) == [0, 1]  # two rounds, two composed passes, within the budget
    assert 0 < acc.spent < pooled.epsilon <= 8.0
    prob.configure(sampling="everything")
    with pytest.raises(ConfigError, match="sampling"):
        prob.local_update(theta, 0, 0, 0.0)


def test_label_skew_reports_where_the_data_is_thin():
    """label_skew: held-out NLL split into samples showing a shape under 1% of the silos' training
    objects and the rest, so a DP gap can be traced to the rare labels."""
    from fedalign.lab.world import RARE_SHARE, _rare_split
    from fedalign.world.scenarios import make_scenario

    sc = make_scenario("label_skew", n_silos=5, seed=1, samples_per_silo=400, test_size=60)
    rare, rows = _rare_split(sc)
    counts: dict[str, int] = {}
    for silo in sc.silos:
        for s in silo:
            for o in s.scene.objects:
                counts[o.shape] = counts.get(o.shape, 0) + 1
    total = sum(counts.values())
    assert rare and all(counts.get(v, 0) < RARE_SHARE * total for v in rare)
    assert all(counts[v] >= RARE_SHARE * total for v in counts if v not in rare)
    assert rows.tolist() == [any(o.shape in rare for o in s.scene.objects) for s in sc.test]
    assert 0 < int(rows.sum()) < len(rows)
    assert _rare_split(make_scenario("domain_skew", n_silos=2, seed=1, samples_per_silo=40, test_size=8)) == ((), None)


def test_public_warm_start_trains_theta0_on_the_public_set_only():
    """public_warm_start E: θ_0 is the fresh projector after E passes over the coordinator's public set,
    the same θ_0 on every call (every strategy starts there); 0 gives the fresh projector back."""
    import torch

    from fedalign.lab.scenarios import ProblemOptions, build_problem

    prob = build_problem("label", ProblemOptions(n_silos=2, rounds=2, seed=0, samples_per_round=16,
                                                 extra={"world": "tiny", "test_size": 16, "public_size": 24}))
    fresh = prob.init_params()
    prob.configure(public_warm_start=2)
    warm, again = prob.init_params(), prob.init_params()
    assert any(not torch.equal(fresh[k], warm[k]) for k in fresh)
    for k in warm:
        torch.testing.assert_close(warm[k], again[k], rtol=0, atol=0)
    assert prob.evaluate(warm)["nll"] < prob.evaluate(fresh)["nll"]  # the public set teaches the pairing
    prob.configure(public_warm_start=0)
    for k in fresh:
        torch.testing.assert_close(prob.init_params()[k], fresh[k], rtol=0, atol=0)
