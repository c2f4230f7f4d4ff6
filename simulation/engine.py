"""The simulator's round loop: one federated round through the Strategy interface and a sum function.

It calls only :class:`common.strategy.Strategy` methods and the injected ``secure_sum``, in the
order the networked engine uses (common/strategy.py), so what runs here is what runs over ZeroMQ.
Local training happens before: the caller passes each silo's update Δ_k and weight w_k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from common.strategy import Strategy, Tensors
from simulation.sums import SumFn

__all__ = ["FederatedState", "RoundReport", "init_state", "run_round"]


@dataclass
class FederatedState:
    """Everything carried between rounds: global params, public state, server state, silo states."""

    params: Tensors
    public: Tensors
    server_state: Tensors
    silo_states: list[Tensors]
    round: int = 0


@dataclass
class RoundReport:
    """What one round produced besides the new state: bytes each silo uploaded, strategy metrics."""

    upload_bytes: list[int]
    metrics: dict[str, float] = field(default_factory=dict)


def init_state(strategy: Strategy, params: Tensors, n_silos: int) -> FederatedState:
    """Round-0 state for ``n_silos`` silos."""
    params = {k: v.detach().clone() for k, v in params.items()}
    return FederatedState(
        params=params,
        public=strategy.init_public(params),
        server_state=strategy.init_server_state(params),
        silo_states=[strategy.init_silo_state(params) for _ in range(n_silos)],
    )


def _nbytes(t: Tensors) -> int:
    return sum(v.numel() * v.element_size() for v in t.values())


def run_round(
    strategy: Strategy,
    state: FederatedState,
    deltas: Sequence[Tensors],
    weights: Sequence[float],
    secure_sum: SumFn,
) -> tuple[FederatedState, RoundReport]:
    """Run every phase of one round over all silos and return the next state (inputs untouched)."""
    if len(deltas) != len(state.silo_states) or len(weights) != len(deltas):
        raise ValueError(
            f"run_round: {len(deltas)} deltas, {len(weights)} weights, {len(state.silo_states)} silo states"
        )
    public = dict(state.public)
    pending = list(state.silo_states)
    uploaded = [0] * len(deltas)
    metrics: dict[str, float] = {}
    outcome = None
    for phase in range(strategy.n_phases):
        contributions = []
        for k, (delta, w) in enumerate(zip(deltas, weights)):
            c, pending[k] = strategy.silo_contribution(phase, delta, w, public, state.silo_states[k])
            uploaded[k] += _nbytes(c)
            contributions.append(c)
        outcome = strategy.aggregate(phase, secure_sum(contributions), state.params, public, state.server_state)
        metrics.update(outcome.metrics)
        if phase < strategy.n_phases - 1:
            public = {**public, **outcome.public}
    assert outcome is not None and outcome.params is not None, "last phase must return params"
    nxt = FederatedState(
        params=outcome.params,
        public=outcome.public,
        server_state=outcome.server_state if outcome.server_state is not None else state.server_state,
        silo_states=pending,
        round=state.round + 1,
    )
    return nxt, RoundReport(upload_bytes=uploaded, metrics=metrics)
