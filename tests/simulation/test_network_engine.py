"""The simulator over the networked runtime (Coordinator + SiloParticipants, InMemoryNetwork) agrees with
the in-process round loop: both drive the same Strategy through real secure sums."""

import pytest
import torch

from common.strategies import make_strategy
from simulation.network import simulate_networked
from simulation.runner import simulate_problem
from simulation.scenarios import ProblemOptions, build_problem
from simulation.sums import crypto_secure_sum

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name,opts", [("fedcmp", {"rank": 3, "reliability": "blend"}), ("fedavgm-b0.5", {})])
def test_network_engine_matches_in_process(name, opts):
    prob = build_problem("toy", ProblemOptions(n_silos=3, seed=4))
    net = simulate_networked(prob, name, make_strategy(name, **opts), 2, scheme="secagg", clip=16.0)
    local = simulate_problem(prob, make_strategy(name, **opts), 2, secure_sum=crypto_secure_sum("secagg", clip=16.0))
    assert net.final["rounds"] == 2
    for k in local.params:
        assert torch.allclose(net.params[k], local.params[k], atol=1e-4), k
    assert net.final["nll"] == pytest.approx(local.final["nll"], rel=1e-3)
    # what crossed the (in-memory) wire per silo includes the masked payload and protocol messages
    assert net.final["wire_up_bytes_per_silo_per_round"] > net.final["upload_bytes_per_silo_per_round"]
