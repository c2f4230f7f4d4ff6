"""The strategy interface: how a round turns silo updates into a new global projector through sums.

A strategy runs ``n_phases`` secure sums per round (FedAvg: 1, Fed-CMP: 2). In phase ``p``
every surviving silo computes a contribution from its own update and the public values the
aggregator broadcast so far; the secure sum hands the aggregator only the element-wise sum of
those contributions (a :class:`Sums`); the aggregator derives the next public values from it,
and after the last phase the new global parameters and the carried server state.

Everything here is pure torch: no I/O, no networking, no randomness without a ``generator``.
The round engine (networked or simulated) owns the order of calls; strategies own the math.

Round protocol the engine follows (docs/fedcmp.md has the full contract)::

    public = strategy.init_public(params)            # round 0; later: last phase's outcome.public
    public = strategy.round_public(public, final)    # what RoundStart carries (final: the run's last round)
    for phase in range(strategy.n_phases):
        c_k, state_k' = strategy.silo_contribution(phase, delta_k, w_k, public, state_k)
        out = strategy.aggregate(phase, secure_sum(c_k over silos), params, public, server_state)
        if phase < n_phases - 1: public = {**public, **out.public}   # broadcast, then next phase
    params, server_state, public = out.params, out.server_state, out.public  # next round

A silo commits ``state_k'`` of the last phase only once the round completes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Mapping, Protocol, runtime_checkable

import torch

__all__ = ["Tensors", "Sums", "PhaseOutcome", "Strategy", "silo_weight", "payload_numbers", "public_problems",
           "contribution_problems"]

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Sums:
    """Element-wise sums of one phase's contributions over ``n_silos`` silos.

    The only input aggregator-side math accepts: a per-silo list cannot be passed where a
    ``Sums`` is expected, and a ``Sums`` over fewer than one silo cannot be built.
    """

    tensors: Mapping[str, torch.Tensor]
    n_silos: int

    def __post_init__(self) -> None:
        if isinstance(self.tensors, (list, tuple)) or not isinstance(self.tensors, Mapping):
            raise TypeError(
                f"Sums.tensors must be a mapping name -> summed tensor, got {type(self.tensors).__name__}"
            )
        if not isinstance(self.n_silos, int) or self.n_silos < 1:
            raise ValueError(f"Sums.n_silos must be a positive int, got {self.n_silos!r}")
        for name, t in self.tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"Sums.tensors[{name!r}] must be a torch.Tensor, got {type(t).__name__}")

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


@dataclass(frozen=True)
class PhaseOutcome:
    """What the aggregator derives from one phase's sums.

    ``public`` is broadcast to the silos before the next phase (or, after the last phase,
    carried into the next round's start). ``params`` and ``server_state`` (the aggregator's
    own carried state, e.g. FedAdam moments: derived from sums, never broadcast) are set only
    after the last phase.
    """

    public: Tensors = field(default_factory=dict)
    params: Tensors | None = None
    server_state: Tensors | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # diagnostics from sums, for logs only


@runtime_checkable
class Strategy(Protocol):
    """A federated optimisation method expressed through sums only."""

    name: str
    n_phases: int
    prox_mu: float  # FedProx proximal weight for local training; 0 for every other strategy
    options: dict  # the resolved options a silo rebuilds the strategy from (make_strategy(name, **options))

    def init_public(self, params: Tensors) -> Tensors:
        """Carried public state at round 0 (broadcast to silos with the parameters)."""

    def init_server_state(self, params: Tensors) -> Tensors:
        """The aggregator's own carried state at round 0 (never broadcast)."""

    def init_silo_state(self, params: Tensors) -> Tensors:
        """A silo's private carried state at round 0 (e.g. error-feedback residuals)."""

    def round_public(self, public: Tensors, final: bool) -> Tensors:
        """The round's public values as RoundStart carries them: the carried ``public`` plus what
        depends only on whether this is the run's ``final`` round (Fed-CMP: its flush flag)."""

    def contribution_spec(self, phase: int, params: Tensors, public: Tensors | None = None) -> dict[str, tuple[int, ...]]:
        """Names and shapes of what each silo sends in ``phase`` (for payload sizes and masking);
        ``public``: the round's public values, when the spec depends on them (Fed-CMP's final round)."""

    def silo_contribution(
        self,
        phase: int,
        delta: Tensors,
        weight: float,
        public: Tensors,
        silo_state: Tensors,
    ) -> tuple[Tensors, Tensors]:
        """One silo's contribution to ``phase`` and its updated private state."""

    def aggregate(
        self, phase: int, sums: Sums, params: Tensors, public: Tensors, server_state: Tensors
    ) -> PhaseOutcome:
        """The aggregator's step after ``phase`` from the phase's sums only."""

    def public_violations(self, phase: int, params: Tensors, public: Tensors) -> list[str]:
        """What is wrong with the public values a silo was sent for ``phase`` (empty: nothing).

        Checked at the silo before it computes a contribution: every public tensor the phase uses,
        no other, each of its declared shape and the parameters' dtype, finite, and the bases
        orthonormal; a contribution computed from anything else could hold more of the silo's
        update than the contribution spec declares (a basis of the wrong shape, e.g. the identity,
        turns a rank-r sketch into the whole matrix)."""


def silo_weight(n_samples: int, cap: float) -> float:
    """A silo's aggregation weight: its sample count clipped to ``cap`` and divided by it.

    The result lies in [0, 1], so weighted contributions have a declared range for fixed-point
    secure sums and one large silo cannot dominate beyond ``cap`` samples. Every party computes it
    here: the lab's simulator and a silo's runtime (``silo.participant``, cap = its max_weight).
    """
    if isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not cap > 0 or not math.isfinite(cap):
        raise ValueError(f"silo_weight: cap must be a positive number, got {cap!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral) or n_samples < 0:
        raise ValueError(f"silo_weight: n_samples must be a non-negative int, got {n_samples!r}")
    return min(float(n_samples), float(cap)) / float(cap)


_ORTH_TOL = 1e-3  # ‖UᵀU − I‖_F of a float32 QR basis is ~1e-6; anything near 1 is no basis


def public_problems(expected: Mapping[str, tuple[int, ...]], public: Mapping[str, torch.Tensor], params: Tensors,
                    orthonormal: tuple[str, ...] = (), zero_ok: tuple[str, ...] = ()) -> list[str]:
    """``public`` against ``expected`` names and shapes: one line per problem (missing, unknown, shape,
    not the dtype of ``params``, non-finite, a basis in ``orthonormal`` that is not; those in ``zero_ok``
    may also be all zero)."""
    dtype = next(iter(params.values())).dtype if params else torch.float32
    problems = []
    for k in sorted(set(expected) - set(public)):
        problems.append(f"public tensor {k!r} is missing")
    for k in sorted(set(public) - set(expected)):
        problems.append(f"public tensor {k!r} is not one this phase uses")
    for k in sorted(set(expected) & set(public)):
        t = public[k]
        if not isinstance(t, torch.Tensor):
            problems.append(f"public tensor {k!r} is not a tensor")
            continue
        if tuple(t.shape) != tuple(expected[k]):
            problems.append(f"public tensor {k!r} has shape {tuple(t.shape)}, the contribution spec needs "
                            f"{tuple(expected[k])}")
            continue
        if t.dtype != dtype:
            problems.append(f"public tensor {k!r} is {t.dtype}, the projector is {dtype}")
            continue
        if not bool(torch.isfinite(t).all()):
            problems.append(f"public tensor {k!r} holds NaN or inf")
            continue
        if k in orthonormal and not (k in zero_ok and not bool(t.any())):
            u = t.to(torch.float64)
            err = float(torch.linalg.matrix_norm(u.T @ u - torch.eye(u.shape[1], dtype=torch.float64)))
            if not err < _ORTH_TOL:
                problems.append(f"public basis {k!r} is not orthonormal (‖UᵀU − I‖ = {err:.3g})")
    return problems


def contribution_problems(spec: Mapping[str, tuple[int, ...]], contribution: Mapping[str, torch.Tensor]) -> list[str]:
    """A computed contribution against its declared spec: names and shapes must match exactly."""
    got = {k: tuple(v.shape) for k, v in contribution.items()}
    want = {k: tuple(v) for k, v in spec.items()}
    if got == want:
        return []
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return [f"contribution {k!r} would be {got.get(k, 'absent')}, its spec is {want.get(k, 'absent')}" for k in diff]


def payload_numbers(strategy: Strategy, params: Tensors, public: Tensors | None = None) -> int:
    """Numbers one silo uploads per round under ``strategy`` (sum over phases of its spec); ``public``:
    the round's public values (``round_public(…, final=True)``: the final round, with Fed-CMP's flush)."""
    total = 0
    for phase in range(strategy.n_phases):
        for shape in strategy.contribution_spec(phase, params, public).values():
            n = 1
            for d in shape:
                n *= int(d)
            total += n
    return total
