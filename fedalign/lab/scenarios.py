"""Build the simulator's federated problem for a scenario name: the embedded world's four, or the toy.

World scenarios go through the silo trainer (imported lazily: building the world takes minutes
the first time); ``toy`` is a synthetic least-squares federation that needs no models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from fedalign.protocol.errors import ConfigError
from fedalign.lab.problem import FederatedProblem

__all__ = ["WORLD_SCENARIOS", "SCENARIOS", "ProblemOptions", "build_problem"]

WORLD_SCENARIOS = ("label", "domain", "style", "unreliable")
SCENARIOS = WORLD_SCENARIOS + ("toy",)


@dataclass(frozen=True)
class ProblemOptions:
    """Scenario parameters shared by every scenario; ``extra`` passes world-specific ones through."""

    n_silos: int = 5
    rounds: int = 10
    seed: int = 0
    alpha: float | None = None  # label skew: Dirichlet α
    corruption: float | None = None  # unreliable: share of mismatched captions at bad silos
    n_unreliable: int | None = None
    samples_per_round: int | None = None  # shard size per silo per round (one pass: × rounds)
    dp: dict[str, Any] | None = None  # noise_multiplier, max_grad_norm, epsilon, delta
    extra: dict[str, Any] = field(default_factory=dict)


def build_problem(scenario: str, opts: ProblemOptions) -> FederatedProblem:
    """The :class:`FederatedProblem` for ``scenario`` under ``opts``."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"--scenario: expected one of {list(SCENARIOS)}, got {scenario!r}")
    if opts.n_silos < 1 or opts.rounds < 1:
        raise ConfigError(f"--silos and --rounds must be ≥ 1, got {opts.n_silos} and {opts.rounds}")
    if scenario == "toy":
        from fedalign.lab.toy import ToyFederation, make_toy

        if opts.dp:
            raise ConfigError("--dp: the toy scenario has no DP trainer; use a world scenario")
        n_bad = opts.n_unreliable or 0
        prob = make_toy(
            m=24, n=16, n_silos=opts.n_silos, per_silo=opts.samples_per_round or 64,
            skew=opts.alpha if opts.alpha is not None else 2.0, n_unreliable=n_bad,
            generator=torch.Generator().manual_seed(opts.seed),
        )
        return ToyFederation(prob, opts.seed, unreliable=tuple(range(opts.n_silos - n_bad, opts.n_silos)))
    from fedalign.lab.world import build_world_problem  # lazy: pulls in transformers and the world

    return build_world_problem(scenario, opts)
