"""The simulator over the networked runtime (Coordinator + SiloParticipants, InMemoryNetwork) agrees with
the in-process round loop: both drive the same Strategy through real secure sums."""

import pytest
import torch

from fedalign.fedcmp.strategies import make_strategy
from fedalign.lab.network import simulate_networked
from fedalign.lab.runner import simulate_problem
from fedalign.lab.scenarios import ProblemOptions, build_problem
from fedalign.lab.sums import crypto_secure_sum

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name,opts,dp", [
    ("fedcmp", {"rank": 3, "reliability": "blend"}, False),
    ("fedcmp", {"rank": 3, "reliability": "reference", "kappa": 0.1}, False),  # coordinator's reference hook
    ("fedcmp", {"rank": 3}, True),  # DP defaults (reliability off), on both sides
    ("fedavgm-b0.5", {}, False),
])
def test_network_engine_matches_in_process(name, opts, dp):
    # Both engines run fedalign.fedcmp.phases.run_phases and convert inputs with sum_inputs, and
    # fixed-point secure sums are exact: the parameters agree to float32 rounding, not to 1e-4.
    prob = build_problem("toy", ProblemOptions(n_silos=3, seed=4))
    net = simulate_networked(prob, name, make_strategy(name, dp=dp, **opts), 2, scheme="secagg", clip=16.0)
    local = simulate_problem(prob, make_strategy(name, dp=dp, **opts), 2,
                             secure_sum=crypto_secure_sum("secagg", clip=16.0))
    assert net.final["rounds"] == 2
    for k in local.params:
        assert torch.allclose(net.params[k], local.params[k], rtol=0, atol=1e-6), k
    assert net.final["nll"] == pytest.approx(local.final["nll"], rel=1e-3)
    # what crossed the (in-memory) wire per silo includes the masked payload and protocol messages
    assert net.final["wire_up_bytes_per_silo_per_round"] > net.final["upload_bytes_per_silo_per_round"]


def test_out_of_range_inputs_are_clipped_alike_in_both_engines():
    # Before: a networked silo clipped an input beyond the declared bound and logged it, while the
    # simulator raised crypto's EncodingOverflow. Now both clip with one function and count it.
    prob = build_problem("toy", ProblemOptions(n_silos=3, seed=4))
    clip = 0.02  # far below the toy's update entries: every round clips
    net = simulate_networked(prob, "fedavg", make_strategy("fedavg"), 1, scheme="secagg", clip=clip)
    local = simulate_problem(prob, make_strategy("fedavg"), 1, secure_sum=crypto_secure_sum("secagg", clip=clip))
    assert local.records[-1]["clipped_values"] > 0
    for k in local.params:
        assert torch.allclose(net.params[k], local.params[k], rtol=0, atol=1e-6), k


def test_aggregator_config_and_simulator_build_the_same_strategy_under_dp(tmp_path):
    # Before: under DP the simulator used OPM β = 0 while `aggregator serve` kept β = 0.5.
    from fedalign.fedcmp.strategies import strategy_options
    from fedalign.lab.choices import build_strategy
    from fedalign.protocol.config.aggregator import StrategySection

    sec = StrategySection(name="fedcmp", dp=True, options={"rank": 4})
    served = make_strategy(sec.name, dp=sec.dp, **sec.options)
    simulated = build_strategy("fedcmp", dp=True, rank=4)
    assert strategy_options(served) == strategy_options(simulated)
    assert served.config.beta == 0.5 and served.config.error_feedback is True and served.config.reliability == "off"
