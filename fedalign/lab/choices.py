"""What an experiment chooses, from command-line style options: its strategy (:func:`build_strategy`,
Fed-CMP's switches checked) and its sum (:func:`make_sum`). The lab's CLI, its experiment families
and the examples build their runs through these two."""

from __future__ import annotations

import warnings

from fedalign.fedcmp.strategies import make_strategy
from fedalign.fedcmp.strategy import Strategy
from fedalign.protocol.errors import ConfigError, InsecureModeRefused

__all__ = ["build_strategy", "make_sum"]


def build_strategy(
    name: str, *, dp: bool = False, rank: int | None = None, error_feedback: bool | None = None,
    reliability: str | None = None, kappa: float | None = None, beta: float | None = None,
    server_lr: float | None = None, seed: int = 0, **reliability_options,
) -> Strategy:
    """A strategy from CLI-style options; Fed-CMP switches left as None take their defaults (DP ones under DP).

    ``reliability_options``: further FedCMPConfig fields (rho_floor, rho_power, rho_smoothing, normalize,
    reliable_basis, flush)."""
    extra = {k: v for k, v in reliability_options.items() if v is not None}
    if name != "fedcmp":
        given = {k: v for k, v in dict(rank=rank, error_feedback=error_feedback, reliability=reliability,
                                       kappa=kappa, beta=beta, server_lr=server_lr, **extra).items()
                 if v is not None}
        if given:
            raise ConfigError(f"--strategy {name}: options {sorted(given)} apply to fedcmp only")
        return make_strategy(name)
    opts = {k: v for k, v in dict(rank=rank, error_feedback=error_feedback, reliability=reliability,
                                  kappa=kappa, beta=beta, server_lr=server_lr, **extra).items() if v is not None}
    if dp and opts.get("beta", 0) >= 0.9:
        warnings.warn("Fed-CMP under DP with β ≥ 0.9: it rang and once diverged (docs/design.md §4)", stacklevel=2)
    return make_strategy("fedcmp", dp=dp, seed=seed, **opts)


def make_sum(kind: str, *, clip: float, allow_insecure_plain_sums: bool):
    """(sum function, label) for ``--sum``: a scheme of crypto's table through crypto/, or plain (in
    process, float64) behind its flag."""
    from fedalign.crypto.schemes import SCHEMES
    from fedalign.lab import sums

    if kind not in SCHEMES:
        raise ConfigError(f"--sum: expected one of {', '.join(SCHEMES)}, got {kind!r}")
    if SCHEMES[kind].insecure:
        if not allow_insecure_plain_sums:
            raise InsecureModeRefused(f"--sum {kind} shows every silo's contribution; add --allow-insecure-plain-sums")
        if kind != "plain":
            raise ConfigError(f"--sum {kind}: the simulator runs insecure sums as plain only")
        warnings.warn("INSECURE: plain sums (simulation only), no secure aggregation", stacklevel=2)
        return sums.plain_sum_insecure, sums.PLAIN_LABEL
    return sums.crypto_secure_sum(kind, clip=clip), sums.secure_sum_label(kind, clip)
