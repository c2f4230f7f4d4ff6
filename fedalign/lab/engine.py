"""The simulator's round: local updates in, the product's phase loop through an in-process sum.

Local training happens before: the caller passes each silo's update Δ_k and weight w_k. The
phases run through :func:`fedalign.fedcmp.phases.run_phases`, the loop the aggregator's
Coordinator runs, and each silo's input is converted by the function a networked silo uses
(:func:`fedalign.fedcmp.phases.sum_inputs`), so what runs here is what runs over ZeroMQ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from fedalign.fedcmp.phases import PhaseSum, run_phases, sum_inputs, sums_from_arrays
from fedalign.fedcmp.strategy import Strategy, Tensors
from fedalign.lab.sums import SumFn

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
    clipped_values: int = 0  # input values beyond the sum's clip bound (a networked silo logs them too)


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
    final: bool = False,
) -> tuple[FederatedState, RoundReport]:
    """Run every phase of one round over all silos and return the next state (inputs untouched);
    ``final``: the run's last round (Fed-CMP's silos flush their residuals, :meth:`round_public`)."""
    if len(deltas) != len(state.silo_states) or len(weights) != len(deltas):
        raise ValueError(
            f"run_round: {len(deltas)} deltas, {len(weights)} weights, {len(state.silo_states)} silo states"
        )
    pending = list(state.silo_states)
    report = RoundReport(upload_bytes=[0] * len(deltas))
    dtype = next(iter(state.params.values())).dtype
    names = tuple(f"silo-{k}" for k in range(len(deltas)))

    def sum_phase(phase: int, public: Tensors, phase_public: Tensors) -> PhaseSum:
        inputs = []
        for k, (delta, w) in enumerate(zip(deltas, weights)):
            c, pending[k] = strategy.silo_contribution(phase, delta, w, public, state.silo_states[k])
            report.upload_bytes[k] += _nbytes(c)
            arrays, clipped = sum_inputs(c, secure_sum.clip)
            report.clipped_values += clipped
            inputs.append(arrays)
        return PhaseSum(sums_from_arrays(secure_sum(inputs), len(inputs), dtype=dtype), names)

    public = strategy.round_public(state.public, final)
    out = run_phases(strategy, state.params, public, state.server_state, sum_phase)
    report.metrics = out.metrics
    nxt = FederatedState(params=out.params, public=out.public, server_state=out.server_state,
                         silo_states=pending, round=state.round + 1)
    return nxt, report
