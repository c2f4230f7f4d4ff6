"""Baselines against independent reference loops; presets; the Strategy protocol."""

import pytest
import torch

from fedalign.protocol.errors import ConfigError, ProtocolError
from fedalign.fedcmp.strategies import (
    PRESETS, FedAdam, FedAvg, FedAvgM, FedCMP, FedCMPConfig, FedProx, FedYogi, make_strategy,
)
from fedalign.fedcmp.strategy import Strategy, Sums, silo_weight
from fedalign.lab.engine import init_state, run_round
from fedalign.lab.sums import plain_sum_insecure


def _updates(rounds, n_silos, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        [{"w": torch.randn(4, 3, generator=g, dtype=torch.float64), "b": torch.randn(4, generator=g, dtype=torch.float64)}
         for _ in range(n_silos)]
        for _ in range(rounds)
    ]


def _state(strategy, ups, weights):
    """The state after one round per entry of ``ups``, the last marked as the run's final round."""
    st = init_state(strategy, {"w": torch.zeros(4, 3, dtype=torch.float64), "b": torch.zeros(4, dtype=torch.float64)},
                    len(weights))
    for t, deltas in enumerate(ups):
        st, _ = run_round(strategy, st, deltas, weights, plain_sum_insecure, final=t == len(ups) - 1)
    return st


def _run(strategy, ups, weights):
    return _state(strategy, ups, weights).params


def _mean(deltas, weights, n):
    return sum(w * d[n] for w, d in zip(weights, deltas)) / sum(weights)


WEIGHTS = [0.5, 1.0, 0.25]


@pytest.mark.parametrize("lr", [1.0, 0.5])
def test_fedavg_matches_reference(lr):
    ups = _updates(3, 3)
    got = _run(FedAvg(lr), ups, WEIGHTS)
    for n in ("w", "b"):
        ref = sum(lr * _mean(d, WEIGHTS, n) for d in ups)
        assert torch.allclose(got[n], ref, atol=1e-12)


@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_fedavgm_matches_reference(beta):
    ups = _updates(4, 3, seed=1)
    got = _run(FedAvgM(beta), ups, WEIGHTS)
    for n in ("w", "b"):
        theta, v = torch.zeros_like(ups[0][0][n]), torch.zeros_like(ups[0][0][n])
        for d in ups:
            v = beta * v + _mean(d, WEIGHTS, n)
            theta = theta + v
        assert torch.allclose(got[n], theta, atol=1e-12)


@pytest.mark.parametrize("cls", [FedAdam, FedYogi])
def test_adaptive_servers_match_reference(cls):
    ups = _updates(3, 3, seed=2)
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    got = _run(cls(server_lr=lr, beta1=b1, beta2=b2, tau=tau), ups, WEIGHTS)
    for n in ("w", "b"):
        theta = torch.zeros_like(ups[0][0][n])
        m, v = torch.zeros_like(theta), torch.full_like(theta, tau**2)
        for d in ups:
            g = _mean(d, WEIGHTS, n)
            m = b1 * m + (1 - b1) * g
            if cls is FedAdam:
                v = b2 * v + (1 - b2) * g**2
            else:
                v = v - (1 - b2) * g**2 * torch.sign(v - g**2)
            theta = theta + lr * m / (v.sqrt() + tau)
        assert torch.allclose(got[n], theta, atol=1e-12)
    other = FedYogi if cls is FedAdam else FedAdam
    assert not torch.allclose(_run(other(server_lr=lr), ups, WEIGHTS)["w"], got["w"])


def test_fedprox_sets_proximal_weight_only():
    assert FedProx(mu=0.1).prox_mu == 0.1
    assert all(make_strategy(n).prox_mu == 0 for n in PRESETS if not n.startswith("fedprox"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_strategy_is_rebuilt_exactly_from_its_options(name):
    """A silo rebuilds the round's strategy from the RoundStart's name and options; every strategy
    takes options now (before: only fedcmp, so fedprox's μ never crossed the wire)."""
    from fedalign.fedcmp.strategies import strategy_options

    s = make_strategy(name)
    opts = strategy_options(s)
    again = make_strategy(name, **opts)
    assert strategy_options(again) == opts and again.name == s.name and again.prox_mu == s.prox_mu
    if name != "fedcmp":
        assert opts  # every baseline has at least its server learning rate


def test_fedprox_mu_is_an_option_and_crosses_in_the_strategy_options():
    from fedalign.fedcmp.strategies import strategy_options

    s = make_strategy("fedprox", mu=0.3)
    assert s.prox_mu == 0.3 and strategy_options(s) == {"mu": 0.3, "server_lr": 1.0}
    assert make_strategy("fedavgm-b0.5", server_lr=0.5).options == {"beta": 0.5, "server_lr": 0.5}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_implement_strategy_protocol_with_unique_names(name):
    s = make_strategy(name)
    assert isinstance(s, Strategy)
    assert s.n_phases in (1, 2)
    assert len({make_strategy(n).name for n in PRESETS}) == len(PRESETS)


def test_make_strategy_errors_name_the_option():
    with pytest.raises(ConfigError, match="--strategy"):
        make_strategy("fedsgd")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['rank'\]; it takes \['server_lr'\]"):
        make_strategy("fedavg", rank=4)
    with pytest.raises(ConfigError, match="rank"):
        make_strategy("fedcmp", rank=0)
    with pytest.raises(ConfigError, match="beta"):
        FedCMPConfig(beta=1.0)
    with pytest.raises(ConfigError, match="fedcmp options"):
        make_strategy("fedcmp", ranks=3)


def test_fedcmp_names_say_which_switches_differ():
    assert make_strategy("fedcmp").name == "fedcmp"
    assert make_strategy("fedcmp", error_feedback=False).name == "fedcmp(error_feedback=False)"


def test_bad_phase_and_missing_public_state_raise_protocol_error():
    s = FedCMP(FedCMPConfig(rank=2, reliability="off"))
    params = {"w": torch.zeros(4, 3)}
    with pytest.raises(ProtocolError, match="phase 2"):
        s.contribution_spec(2, params)
    with pytest.raises(ProtocolError, match="w/U"):
        s.silo_contribution(1, params, 1.0, s.init_public(params), s.init_silo_state(params))
    with pytest.raises(ValueError, match="Σ w_k"):
        FedAvg().aggregate(0, Sums({"w/wd": torch.zeros(4, 3), "weight": torch.zeros(1)}, 1), params, {}, {})


def test_silo_weight_clips_and_normalises():
    assert silo_weight(50, 100) == 0.5
    assert silo_weight(500, 100) == 1.0
    assert silo_weight(0, 100) == 0.0
    with pytest.raises(ValueError, match="cap"):
        silo_weight(3, 0)


# --- Fed-CMP's residual flush (issue 27 item 3)

@pytest.mark.parametrize("rounds", [1, 4])
def test_a_flushed_rank1_fedcmp_run_leaves_no_movement_behind(rounds):
    # β 0: the rank-1 coefficients carry part of each silo's carried update, the residual the rest; with
    # the flush, the run's total step telescopes to Σ_t (weighted mean of Δ_t), what FedAvg applies
    ups, w = _updates(rounds, 3, seed=rounds), WEIGHTS
    flushed = _state(FedCMP(FedCMPConfig(rank=1, beta=0.0, reliability="off")), ups, w)
    want = sum(_mean(d, w, "w") for d in ups)
    torch.testing.assert_close(flushed.params["w"], want, atol=1e-10, rtol=1e-9)
    assert all(float(s["w/e"].abs().max()) == 0.0 for s in flushed.silo_states)  # nothing carried on
    kept = _state(FedCMP(FedCMPConfig(rank=1, beta=0.0, reliability="off", flush=False)), ups, w)
    assert float((kept.params["w"] - want).norm()) > 0.1 * float(want.norm())  # without it, some is left
    assert float(kept.silo_states[0]["w/e"].abs().max()) > 0


def test_only_the_final_round_flushes_and_only_when_error_feedback_is_on():
    s = FedCMP(FedCMPConfig(rank=1, reliability="off"))
    params = {"w": torch.zeros(4, 3), "b": torch.zeros(4)}
    pub = s.init_public(params)
    assert float(s.round_public(pub, True)["flush"]) == 1.0 and float(s.round_public(pub, False)["flush"]) == 0.0
    assert "w/wE" in s.contribution_spec(1, params, s.round_public(pub, True))
    assert "w/wE" not in s.contribution_spec(1, params, s.round_public(pub, False))
    assert "w/wE" not in s.contribution_spec(1, params)
    assert "flush" not in FedCMP(FedCMPConfig(rank=1, error_feedback=False)).round_public(pub, True)
    assert "flush" not in FedCMP(FedCMPConfig(rank=1, flush=False)).round_public(pub, True)
    assert FedAvg().round_public(pub, True) == pub
