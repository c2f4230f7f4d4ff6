"""FedProx's μ reaches local training from the strategy, on the path `aggregator serve` runs.

Before: Strategy.prox_mu was read only by the lab (lab/runner.py, lab/network.py); a served silo
trained with silo.toml's train.prox_mu whatever the aggregator's strategy said, and "fedprox" took
no options, so its μ never crossed the wire. The lab's FedProx row did not measure what serve ran.
"""

from __future__ import annotations


import pytest
import torch


from fedalign.lab.toy import ToyTrainer  # noqa: E402
from fedalign.lab.toy_federation import run_federation  # noqa: E402

from fedalign.protocol.errors import ConfigError  # noqa: E402


class SpyTrainer(ToyTrainer):
    seen: list[tuple[str, float | None]] = []

    def train(self, round_id, params, *, prox_mu=None):
        SpyTrainer.seen.append((self.index, prox_mu))
        return super().train(round_id, params, prox_mu=prox_mu or 0.0)


def test_a_served_silo_trains_with_the_rounds_fedprox_mu():
    SpyTrainer.seen = []
    res = run_federation(3, rounds=2, strategy="fedprox", options={"mu": 0.3},
                         make_trainer=lambda fed, i: SpyTrainer(fed, i))
    assert res.error is None, res.error
    assert len(SpyTrainer.seen) == 6 and {mu for _, mu in SpyTrainer.seen} == {0.3}
    # and any other strategy trains without a proximal term
    SpyTrainer.seen = []
    res = run_federation(3, rounds=1, strategy="fedavg", make_trainer=lambda fed, i: SpyTrainer(fed, i))
    assert res.error is None and {mu for _, mu in SpyTrainer.seen} == {0.0}


def test_the_lab_fedprox_row_equals_the_networked_runtime():
    """The lab's in-process round loop (Strategy.prox_mu handed to local training directly) and the
    silo runtime (μ from the RoundStart's strategy options) give the same parameters."""
    from fedalign.fedcmp.strategies import make_strategy
    from fedalign.lab.network import simulate_networked
    from fedalign.lab.runner import simulate_problem
    from fedalign.lab.scenarios import ProblemOptions, build_problem
    from fedalign.lab.sums import crypto_secure_sum

    prob = build_problem("toy", ProblemOptions(n_silos=3, seed=4))
    runs = {}
    for mu in (0.0, 5.0):
        net = simulate_networked(prob, "fedprox", make_strategy("fedprox", mu=mu), 2, scheme="secagg", clip=16.0)
        local = simulate_problem(prob, make_strategy("fedprox", mu=mu), 2,
                                 secure_sum=crypto_secure_sum("secagg", clip=16.0))
        for k in local.params:
            assert torch.allclose(net.params[k], local.params[k], rtol=0, atol=1e-6), (mu, k)
        runs[mu] = net.params
    assert any(not torch.allclose(runs[0.0][k], runs[5.0][k]) for k in runs[0.0])  # μ changed what was trained


def test_the_session_trainer_hands_mu_to_the_silo_trainer(tmp_path, tiny_dir, data_files):
    """SessionTrainer -> SiloSession.train_round -> LocalTrainer.train_round: a large μ pulls the
    update towards θ_t (a smaller Δ than μ = 0 from the same shard order)."""
    from test_cli import _toml

    from fedalign.protocol.config.silo import load_silo_config
    from fedalign.silo.federation import SessionTrainer
    from fedalign.silo.session import SiloSession

    norms = {}
    for mu in (0.0, 50.0):
        d = tmp_path / f"mu{mu:g}"
        d.mkdir()
        cfg = load_silo_config(_toml(d, tiny_dir, data_files, train__optimizer="sgd", train__lr=0.02,
                                     train__local_steps=8))
        session = SiloSession(cfg)
        upd = SessionTrainer(session).train(0, session.initial_params(), prox_mu=mu)
        norms[mu] = float(sum(v.norm() ** 2 for v in upd.delta.values()))
    assert norms[50.0] < 0.5 * norms[0.0]


def test_train_prox_mu_in_silo_toml_is_refused_naming_the_strategy(tmp_path, tiny_dir, data_files):
    from test_cli import _toml

    from fedalign.protocol.config.silo import load_silo_config

    with pytest.raises(ConfigError, match=r"train.prox_mu is gone.*\[strategy\]"):
        load_silo_config(_toml(tmp_path, tiny_dir, data_files, train__prox_mu=0.1))


def test_a_pinned_silo_refuses_a_mu_it_did_not_choose_before_training():
    """μ now crosses the wire as a strategy option, so an aggregator could pick it: a silo's pin
    refuses any μ but its own (or its range), before a shard is drawn."""
    from fedalign.fedcmp.pin import StrategyPin

    SpyTrainer.seen = []
    res = run_federation(3, rounds=1, strategy="fedprox", options={"mu": 100.0},
                         silo_policy={"strategy": StrategyPin("fedprox", {"mu": 0.01})},
                         policy_overrides={"max_failed_rounds": 1, "roster_wait_s": 3},
                         make_trainer=lambda fed, i: SpyTrainer(fed, i))
    assert SpyTrainer.seen == []  # nothing trained
    refusals = [e for e in res.events if e["event"] in ("refused", "round_refused", "silo_refused")
                or "refus" in e["event"]]
    assert refusals and any("mu = 100" in str(e) for e in refusals), refusals[:3]
