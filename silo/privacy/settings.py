"""The silo's view of its DP settings: what ``[privacy]`` (with ``data.max_passes`` and
``train.seed``) asks of the mechanism and the plan; the budget (ε, δ, accountant) goes to
:class:`~fedalign.silo.privacy.accountant.PrivacyAccountant`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["DPSettings", "dp_settings"]


@dataclass(frozen=True)
class DPSettings:
    """``noise_multiplier=None``: derived from the accountant's (ε, δ) budget for the planned
    schedule (:func:`~fedalign.silo.privacy.plan.plan_for`); a number is the expert override, checked against it."""

    noise_multiplier: float | None
    max_grad_norm: float
    clipping: Literal["ghost", "per_sample"] = "ghost"
    insecure_seed: int | None = None  # INSECURE: tests only; None = OS-seeded noise and sampling
    passes: int = 1  # planned passes over the data (each composes; the plan covers all of them)


def dp_settings(cfg: Any) -> DPSettings | None:
    """The DP settings of a silo config (None when ``privacy.enabled`` is false)."""
    p = cfg.privacy
    if not p.enabled:
        return None
    return DPSettings(p.noise_multiplier, p.max_grad_norm, p.clipping,
                      cfg.train.seed if p.insecure_seeded_noise else None, passes=cfg.data.max_passes)
