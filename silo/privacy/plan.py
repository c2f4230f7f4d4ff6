"""A silo's DP plan: the noise multiplier for its schedule, derived once per run from the budget.

The user states (ε, δ); :func:`plan_dp` derives σ for the planned schedule (Poisson rate q = batch
/ shard size, T steps a round, ``passes`` passes) with the accountant the silo reports with, so
the plan's ε is what the ledger will show. An expert σ (``privacy.noise_multiplier``) is refused
when its schedule cannot meet the budget. A run derives its plan once (:func:`plan_for`: the
session before any model loads, or :meth:`silo.trainer.LocalTrainer.plan_dp`) and passes the
:class:`DPPlan` on: to the trainer, to the policy's per-pass clause, to the ledger, to the log.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal

from fedalign.protocol.errors import PrivacyBudgetExceeded, PrivacyError
from fedalign.silo.privacy.accountant import compute_epsilon
from fedalign.silo.privacy.settings import DPSettings

__all__ = ["DPPlan", "plan_dp", "plan_for", "noise_for_budget", "NOISE_TO_CLIP_WARN"]

def noise_for_budget(epsilon: float, delta: float, sample_rate: float, steps: int, *, passes: int = 1,
                     accountant: Literal["rdp", "prv"] = "rdp", rtol: float = 0.002,
                     max_noise: float = 200.0) -> float:
    """The smallest noise multiplier σ (to ``rtol``) whose ``passes`` × (σ, q, T) history costs ≤ ε.

    Uses :func:`compute_epsilon`, the accountant the silo reports with, so the derived plan's ε
    is what the ledger will show. Bisection on σ (ε decreases monotonically in σ).
    Raises :class:`PrivacyBudgetExceeded` when not even ``max_noise`` meets the budget.
    """
    if epsilon <= 0 or not 0 < delta < 1:
        raise PrivacyError(f"budget needs epsilon > 0 and 0 < delta < 1, got ({epsilon}, {delta})")
    if not 0 < sample_rate <= 1 or steps < 1 or passes < 1:
        raise PrivacyError(f"bad schedule: sample rate {sample_rate}, steps {steps}, passes {passes}")

    def eps(sigma: float) -> float:
        with warnings.catch_warnings():  # the search visits σ where the optimal RDP order is at the range's end
            warnings.simplefilter("ignore")
            return compute_epsilon([(sigma, sample_rate, steps)] * passes, delta, accountant)

    if eps(max_noise) > epsilon:
        raise PrivacyBudgetExceeded(
            f"impossible privacy budget: cannot meet epsilon={epsilon:g}, delta={delta:g}: even noise multiplier "
            f"{max_noise:g} costs epsilon {eps(max_noise):.4g} for {passes} pass(es) of {steps} steps at "
            f"sample rate {sample_rate:.4g}; use fewer steps, a smaller sample rate or a larger budget")
    lo, hi = 0.05, max_noise
    if eps(lo) <= epsilon:
        return lo
    while hi / lo > 1 + rtol:
        mid = (lo * hi) ** 0.5
        if eps(mid) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


NOISE_TO_CLIP_WARN = 10.0
"""The plan warns when σ·√d/B, the norm of one step's noise on the mean gradient in units of the
clip norm C, is above this.

A step's signal on the mean gradient is at most C (every clipped per-sample gradient pointing the
same way) and usually much less. Over T steps the signal adds up linearly and the independent
noise as √T, so at a ratio r even perfectly aligned gradients need about r² steps before the
summed signal is as large as the summed noise: 100 steps at r = 10, more than a round, and often
more than a whole run, of a silo here takes. The measurements agree: the DP runs that learned sat
at 0.5-1 (results/notes/dp_notes.md; the real digits' public subspace, results/notes/real_notes.md), while
the real digits' full projector at 17.9 and 52 stayed at chance. 10 rather than a lower figure
because the warning is for plans that cannot learn, not for every hard one: the digits at 7 also
failed with 12 steps, but a run of a few hundred steps can average that down.
"""


@dataclass(frozen=True)
class DPPlan:
    """A silo's DP schedule for a run, fixed before training: what every round will be charged.

    ``sample_rate`` and ``steps`` are the dominating (largest) ones over the planned shards, so a
    run that follows the plan spends at most ``epsilon`` (the pass's accountant charge is
    (min σ, max q, max T)).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    passes: int
    shard_size: int
    batch_size: int
    max_grad_norm: float
    epsilon: float  # what the accountant computes for the planned schedule
    epsilon_budget: float
    delta: float
    accountant: str
    derived: bool  # True: σ derived from the budget; False: the expert override was used
    n_params: int = 0  # d: values trained, and noised, per step (r·n per factored weight in a subspace)

    @property
    def noise_to_clip(self) -> float | None:
        """σ·√d/B: one step's noise norm on the averaged gradient, in units of the clip norm (None when
        d, ``n_params``, is not known)."""
        if not self.n_params:
            return None
        return self.noise_multiplier * self.n_params ** 0.5 / max(self.batch_size, 1)

    def warning(self) -> str | None:
        """A warning naming the knobs when the noise drowns any signal a step can carry
        (``noise_to_clip`` > :data:`NOISE_TO_CLIP_WARN`), else None."""
        r = self.noise_to_clip
        if r is None or r <= NOISE_TO_CLIP_WARN:
            return None
        expert = "" if self.derived else ", or lower the expert override privacy.noise_multiplier"
        return (f"warning: noise/clip on the mean gradient ≈ {r:.3g} > {NOISE_TO_CLIP_WARN:g}: each step's noise is "
                f"{r:.3g}× the largest signal a step can carry (σ·√d/B, d = {self.n_params} noised values), so this "
                f"plan is not expected to learn. Lower it: raise train.batch_size (the expected Poisson batch B, now "
                f"{self.batch_size}; train.physical_batch_size runs it as micro-batches when memory is short), lower "
                f"data.max_passes (now {self.passes}: fewer passes need less σ), or raise privacy.epsilon (now "
                f"{self.epsilon_budget:g}){expert}")

    def describe(self) -> str:
        """For logs: one line with σ, q, steps, passes, ε and the noise against the clipped signal, and a
        second line with :meth:`warning` when the plan is not expected to learn."""
        rel = ""
        if self.n_params:  # noise norm on the averaged gradient, in units of the clip norm
            rel = f", noise/clip on the mean gradient ≈ σ·√d/B = {self.noise_to_clip:.3g}"
        src = "derived from the budget" if self.derived else "expert override privacy.noise_multiplier"
        epochs = self.steps * self.sample_rate  # expected visits of each record of the round's shard
        return (f"DP plan: noise multiplier σ={self.noise_multiplier:.4g} ({src}), Poisson rate q="
                f"{self.sample_rate:.4g} (batch {self.batch_size} of shard {self.shard_size}), {self.steps} "
                f"steps/round (each record of the shard seen {epochs:.3g}× on average), {self.passes} pass(es) "
                f"over the data composed, clip C={self.max_grad_norm:g} -> epsilon="
                f"{self.epsilon:.4g} of budget {self.epsilon_budget:g} at delta={self.delta:g} "
                f"({self.accountant}){rel}") + ("\n" + self.warning() if self.warning() else "")

    @property
    def epsilon_per_pass(self) -> float:
        """ε of one pass of this plan (one round's shard: shards of a pass compose in parallel), by the
        plan's accountant: what a site policy's ``max_epsilon_per_pass`` bounds."""
        return compute_epsilon([(self.noise_multiplier, self.sample_rate, self.steps)], self.delta,
                               self.accountant)  # type: ignore[arg-type]


def plan_dp(epsilon: float, delta: float, *, shard_sizes: list[int], batch_size: int,
            steps_for: Callable[[int], int], max_grad_norm: float, passes: int = 1,
            noise_multiplier: float | None = None, accountant: Literal["rdp", "prv"] = "rdp",
            n_params: int = 0) -> DPPlan:
    """The DP plan for shards of ``shard_sizes`` (Poisson rate q = batch/size, T = steps_for(size)).

    ``noise_multiplier=None`` derives σ from (ε, δ) for the dominating (max q, max T) schedule;
    a given σ is the expert override and is refused (:class:`PrivacyBudgetExceeded`) when its
    schedule cannot meet the budget.
    """
    sizes = [int(n) for n in shard_sizes if n > 0]
    if not sizes:
        raise PrivacyError("DP plan: no non-empty shard")
    q = max(min(1.0, batch_size / n) for n in sizes)
    T = max(steps_for(n) for n in sizes)
    if noise_multiplier is None:
        sigma, derived = noise_for_budget(epsilon, delta, q, T, passes=passes, accountant=accountant), True
    else:
        sigma, derived = float(noise_multiplier), False
    eps = compute_epsilon([(sigma, q, T)] * passes, delta, accountant)
    if eps > epsilon:
        raise PrivacyBudgetExceeded(
            f"impossible privacy budget: the planned schedule ({passes} pass(es) of {T} steps at sample rate "
            f"{q:.4g}, noise multiplier {sigma:g}) costs epsilon {eps:.4g} > privacy.epsilon {epsilon:g} "
            f"(delta {delta:g}); leave privacy.noise_multiplier unset to derive it from the budget, or use "
            "fewer local steps / a smaller batch")
    return DPPlan(sigma, q, T, passes, max(sizes), batch_size, max_grad_norm, eps, epsilon, delta, accountant,
                  derived, n_params)


def plan_for(dp: DPSettings, accountant: Any, train: Any, shard_sizes: list[int], *, n_params: int = 0) -> DPPlan:
    """The run's plan from its settings: ``dp`` (σ override, clip, passes), the budget the
    ``accountant`` holds (ε, δ, which accountant), ``train``'s batch size and steps per shard
    (``train.steps_for``), for shards of ``shard_sizes``."""
    return plan_dp(accountant.epsilon_budget, accountant.delta, shard_sizes=list(shard_sizes),
                   batch_size=train.batch_size, steps_for=train.steps_for, max_grad_norm=dp.max_grad_norm,
                   passes=dp.passes, noise_multiplier=dp.noise_multiplier, accountant=accountant.accountant,
                   n_params=n_params)
