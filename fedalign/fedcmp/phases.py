"""The one phase loop of a round: every secure sum a strategy asks for, in order, and the new state.

Both drivers run this very function: the aggregator's Coordinator (``aggregator serve``, sums
over the network) and the lab's simulator (sums in process). What differs is only how one
phase's sum is obtained, passed in as ``sum_phase``; so every row of a results table measures the
round logic that ``aggregator serve`` runs.

Also here, so that a silo's input and the simulator's input are the same numbers: the
conversion of a contribution to secure-sum input (float64, values beyond the sum's declared
clip bound clipped and counted) and of sums back to the parameters' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch

from fedalign.fedcmp.strategy import Strategy, Sums, Tensors

__all__ = ["PhaseSum", "RoundOutcome", "run_phases", "sum_inputs", "sums_from_arrays", "phase_allows_dropouts"]


@dataclass(frozen=True)
class PhaseSum:
    """What a driver's ``sum_phase`` returns: the phase's sums and who is in them."""

    sums: Sums
    included: tuple[str, ...]


@dataclass
class RoundOutcome:
    """The state after one round's last phase, and what the phases reported."""

    params: Tensors
    public: Tensors
    server_state: Tensors
    metrics: dict[str, float] = field(default_factory=dict)
    included: tuple[str, ...] = ()


SumPhase = Callable[[int, Tensors, Tensors], PhaseSum]
"""``sum_phase(phase, public, phase_public)``: run one secure sum and return its :class:`PhaseSum`.

``public`` is everything silos know for this phase (the round's public state merged with what
earlier phases published); ``phase_public`` is only what earlier phases of this round published
(what a SumStart carries over the network). A driver may raise to abandon the round.
"""


def run_phases(strategy: Strategy, params: Tensors, public: Tensors, server_state: Tensors,
               sum_phase: SumPhase) -> RoundOutcome:
    """Run ``strategy``'s phases over ``sum_phase`` and return the round's outcome (inputs untouched)."""
    public = dict(public)
    phase_public: Tensors = {}
    metrics: dict[str, float] = {}
    included: tuple[str, ...] = ()
    outcome = None
    for phase in range(strategy.n_phases):
        got = sum_phase(phase, public, phase_public)
        included = tuple(got.included)
        outcome = strategy.aggregate(phase, got.sums, params, public, server_state)
        metrics.update({k: float(v) for k, v in getattr(outcome, "metrics", {}).items()})
        if phase < strategy.n_phases - 1:
            public = {**public, **outcome.public}
            phase_public = {**phase_public, **outcome.public}
    if outcome is None or outcome.params is None:
        raise RuntimeError(f"strategy {strategy.name!r}: its last phase returned no params")
    return RoundOutcome(
        params={k: v.detach().clone() for k, v in outcome.params.items()},
        public=dict(outcome.public),
        server_state=dict(outcome.server_state) if outcome.server_state is not None else dict(server_state),
        metrics=metrics,
        included=included,
    )


def sum_inputs(contribution: Tensors, clip: float) -> tuple[dict[str, np.ndarray], int]:
    """A contribution as secure-sum input: float64 arrays inside ``[-clip, clip]``, and how many
    values had to be clipped to get there (the caller logs that count; 0 in a well-set run)."""
    out: dict[str, np.ndarray] = {}
    clipped = 0
    for k, v in contribution.items():
        a = v.detach().to("cpu", torch.float64).contiguous().numpy()
        over = np.abs(a) > clip
        if over.any():
            clipped += int(over.sum())
            a = np.clip(a, -clip, clip)
        out[k] = a
    return out, clipped


def sums_from_arrays(arrays: Mapping[str, np.ndarray], n_silos: int, like: Tensors | None = None,
                     dtype: torch.dtype | None = None) -> Sums:
    """Sums from a secure sum's float64 arrays, cast to ``dtype`` (or each tensor's in ``like``)."""
    out = {}
    for k, a in arrays.items():
        t = torch.from_numpy(np.array(a, copy=True))
        want = dtype if dtype is not None else (like[k].dtype if like is not None and k in like else None)
        if like is not None and k in like:
            t = t.reshape(like[k].shape)
        out[k] = t.to(want) if want is not None else t
    return Sums(out, n_silos=n_silos)


def phase_allows_dropouts(n_phases: int, phase: int, signed_survivors: bool) -> bool:
    """Whether a phase's secure sum may complete without some of its participants.

    One-phase strategies: yes (SecAgg's dropout tolerance). Multi-phase: only phase 0 under a scheme
    whose survivors sign who was included (``SchemeSpec.signed_survivors``: secagg), since that list
    fixes the round's one set; every later phase must sum exactly that set. Under ckks (and plain) a
    silo cannot verify who was included, so no phase allows dropouts. The aggregator applies the
    same rule (it must: both sides configure the sum)."""
    return n_phases == 1 or (phase == 0 and signed_survivors)
