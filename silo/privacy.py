"""Record-level differential privacy for the projector: Opacus clipping and noise, and accounting.

Training (:class:`DPProjectorTrainer`): Opacus wraps *only the projector*. The frozen LM is
run once per step on a detached copy of the projector output ``z``; its backward gives
``G_i = dL_i/dz_i`` per sample (sample i's loss depends on row i only). The surrogate
``s_i = <z_i, G_i>`` has exactly ``dL_i/dθ`` as its gradient, so Opacus' per-sample clipping
(ghost clipping by default, or materialised per-sample gradients) runs its two backward passes
through the projector alone and the LM's backward is paid once, as in a non-private step.

Accounting (:class:`PrivacyAccountant`), one-pass aware: each round trains on a fresh shard
with Poisson sampling at ``q = batch / shard size`` for ``T`` steps, so each record is charged
``(σ, q, T)`` for its own shard only. Shards of one pass are disjoint (parallel composition:
the pass costs its worst shard, dominated by ``(min σ, max q, max T)``); passes compose
sequentially. The accountant (Opacus RDP or PRV) computes ε from that history; the budget is
checked before any update leaves the silo and :class:`PrivacyBudgetExceeded` stops it.

Randomness: DP noise and Poisson sampling come from generators seeded by ``os.urandom``. The
run's reproducibility seed reaches them only through ``insecure_seeded_noise`` (tests), which
warns loudly. Opacus' ``secure_mode`` needs torchcsprng (not installable here): the generator
is torch's Mersenne Twister, OS-seeded, not a CSPRNG (see docs/silo.md).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from fedalign.protocol.errors import PrivacyBudgetExceeded, PrivacyError
from fedalign.compliance.ledger import Ledger
from fedalign.host.atomic import atomic_write_json

# Opacus' hooks sit on the projector, whose input (cached tower features) needs no gradient.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")

__all__ = [
    "RoundCharge",
    "PrivacyAccountant",
    "DPProjectorTrainer",
    "os_seeded_generator",
    "dp_generator",
    "poisson_batches",
    "compute_epsilon",
    "noise_for_budget",
    "DPPlan",
    "plan_dp",
]


def os_seeded_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with 64 bits from the OS (never from the run's seed)."""
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))


def dp_generator(insecure_seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for DP noise / sampling: OS-seeded, or ``insecure_seed`` with a loud warning."""
    if insecure_seed is None:
        return os_seeded_generator(device)
    warnings.warn("INSECURE: DP noise and sampling are seeded from the run seed "
                  "(privacy.insecure_seeded_noise); the noise can be subtracted. Tests only.",
                  RuntimeWarning, stacklevel=2)
    return torch.Generator(device=device).manual_seed(int(insecure_seed))


def poisson_batches(n: int, sample_rate: float, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` Poisson batches over ``range(n)``: each index joins each batch with prob ``q``.

    Batches vary in size and may be empty; that is what the accountant's amplification assumes.
    """
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample rate must be in (0, 1], got {sample_rate}")
    draws = torch.rand(steps, n, generator=generator) < sample_rate
    return [row.nonzero().flatten() for row in draws]


@dataclass(frozen=True)
class RoundCharge:
    """One round's DP mechanism on one shard: every record of the shard gets exactly this."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    pass_index: int = 0
    shard_index: int = 0
    shard_size: int = 0


def compute_epsilon(history: list[tuple[float, float, int]], delta: float,
                    accountant: Literal["rdp", "prv"] = "rdp") -> float:
    """ε of a composed history of (noise_multiplier, sample_rate, steps), by Opacus' accountant."""
    if not history:
        return 0.0
    return _epsilon(tuple((float(s), float(q), int(t)) for s, q, t in history), float(delta), accountant)


@functools.lru_cache(maxsize=256)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = list(history)
    try:
        eps = float(acc.get_epsilon(delta=delta))
    except Exception as exc:  # PRV's domain checks raise ValueError / RuntimeError
        raise PrivacyError(f"{accountant} accountant failed for history {history}: {exc}") from exc
    return eps


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

    def describe(self) -> str:
        """One line for logs: σ, q, steps, passes, ε, and the noise against the clipped signal."""
        rel = ""
        if self.n_params:  # noise norm on the averaged gradient, in units of the clip norm
            rel = (f", noise/clip on the mean gradient ≈ σ·√d/B = "
                   f"{self.noise_multiplier * self.n_params ** 0.5 / max(self.batch_size, 1):.3g}")
        src = "derived from the budget" if self.derived else "expert override privacy.noise_multiplier"
        epochs = self.steps * self.sample_rate  # expected visits of each record of the round's shard
        return (f"DP plan: noise multiplier σ={self.noise_multiplier:.4g} ({src}), Poisson rate q="
                f"{self.sample_rate:.4g} (batch {self.batch_size} of shard {self.shard_size}), {self.steps} "
                f"steps/round (each record of the shard seen {epochs:.3g}× on average), {self.passes} pass(es) "
                f"over the data composed, clip C={self.max_grad_norm:g} -> epsilon="
                f"{self.epsilon:.4g} of budget {self.epsilon_budget:g} at delta={self.delta:g} "
                f"({self.accountant}){rel}")


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


class PrivacyAccountant:
    """The silo's budget: per-pass worst shard, composed over passes; checked before release.

    ``state_path`` (JSON, atomic) makes it survive restarts; ``ledger`` records every charge.
    """

    def __init__(self, epsilon: float, delta: float, *, accountant: Literal["rdp", "prv"] = "rdp",
                 state_path: str | Path | None = None, ledger: Ledger | None = None):
        if epsilon <= 0 or not 0 < delta < 1:
            raise PrivacyError(f"budget needs epsilon > 0 and 0 < delta < 1, got ({epsilon}, {delta})")
        self.epsilon_budget = float(epsilon)
        self.delta = float(delta)
        self.accountant = accountant
        self.state_path = Path(state_path) if state_path else None
        self.ledger = ledger
        self.passes: dict[int, tuple[float, float, int]] = {}
        self.charges: list[RoundCharge] = []
        if self.state_path and self.state_path.exists():
            self._load()

    def _load(self) -> None:
        assert self.state_path is not None
        try:
            st = json.loads(self.state_path.read_text())
            if st["accountant"] != self.accountant or st["delta"] != self.delta:
                raise PrivacyError(f"{self.state_path}: saved with accountant={st['accountant']}, "
                                   f"delta={st['delta']}; config says {self.accountant}, {self.delta}")
            self.passes = {int(k): tuple(v) for k, v in st["passes"].items()}  # type: ignore[misc]
            self.charges = [RoundCharge(**c) for c in st["charges"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise PrivacyError(f"{self.state_path}: unreadable accountant state: {exc}") from None

    def _history(self, extra: RoundCharge | None = None) -> list[tuple[float, float, int]]:
        passes = self._merged(extra) if extra is not None else self.passes
        return [passes[k] for k in sorted(passes)]

    @property
    def spent(self) -> float:
        """ε spent so far at ``delta`` (record level)."""
        return compute_epsilon(self._history(), self.delta, self.accountant)

    def epsilon_after(self, charge: RoundCharge) -> float:
        return compute_epsilon(self._history(charge), self.delta, self.accountant)

    def check(self, charge: RoundCharge) -> float:
        """ε after ``charge``; PrivacyBudgetExceeded if it would pass the budget."""
        eps = self.epsilon_after(charge)
        if eps > self.epsilon_budget:
            raise PrivacyBudgetExceeded(
                f"privacy budget exhausted: round on shard {charge.shard_index} (pass {charge.pass_index}) "
                f"would bring epsilon to {eps:.4g} > budget {self.epsilon_budget:g} at delta "
                f"{self.delta:g}; already spent {self.spent:.4g}; the silo stops, nothing was sent")
        return eps

    def check_feasible(self, charge: RoundCharge) -> float:
        """Fail before training when not even one round fits the budget (an impossible budget)."""
        eps = compute_epsilon([(charge.noise_multiplier, charge.sample_rate, charge.steps)],
                              self.delta, self.accountant)
        if eps > self.epsilon_budget:
            raise PrivacyBudgetExceeded(
                f"impossible privacy budget: one round ({charge.steps} steps, sample rate "
                f"{charge.sample_rate:.4g}, noise multiplier {charge.noise_multiplier:g}) already costs "
                f"epsilon {eps:.4g} > privacy.epsilon {self.epsilon_budget:g} (delta {self.delta:g}); "
                "raise privacy.noise_multiplier or epsilon, or use fewer local steps / a smaller batch")
        return eps

    def charge(self, charge: RoundCharge, *, now: float | None = None) -> float:
        """Check, then commit ``charge`` (state file, then ledger); returns ε spent after it."""
        eps = self.check(charge)
        self.passes = self._merged(charge)
        self.charges.append(charge)
        if self.state_path:
            atomic_write_json(self.state_path, {
                "accountant": self.accountant, "delta": self.delta,
                "passes": {str(k): list(v) for k, v in self.passes.items()},
                "charges": [asdict(c) for c in self.charges]})
        if self.ledger is not None:
            import time

            self.ledger.append("privacy_charge", {**asdict(charge), "epsilon_spent": eps,
                                                  "epsilon_budget": self.epsilon_budget,
                                                  "delta": self.delta, "accountant": self.accountant},
                               now=time.time() if now is None else now)
        return eps

    def _merged(self, charge: RoundCharge) -> dict[int, tuple[float, float, int]]:
        """Per-pass histories with ``charge`` folded into its pass's dominating mechanism."""
        passes = dict(self.passes)
        cur = passes.get(charge.pass_index)
        new = (charge.noise_multiplier, charge.sample_rate, charge.steps)
        passes[charge.pass_index] = new if cur is None else (
            min(cur[0], new[0]), max(cur[1], new[1]), max(cur[2], new[2]))
        return passes


class DPProjectorTrainer:
    """Opacus on the projector only: per-sample clipping, Gaussian noise, one optimizer step.

    ``clipping='ghost'`` uses Opacus' ghost clipping (norms without per-sample gradients);
    ``'per_sample'`` materialises per-sample gradients (Opacus hooks). Both see the surrogate
    loss described in the module docstring, so the frozen LM is traversed once per step.

    ``group`` (one rank of a torchrun silo, a :class:`silo.distributed.Group`): Opacus'
    ``DistributedDPOptimizer`` classes; each rank clips its own samples, rank 0 alone adds the
    noise, and :meth:`step` sums the ranks' gradients. ``expected_batch_size`` is the *global*
    one; each rank divides by its share and Opacus' reduction by the world size, so the step is
    (Σ clipped + one noise draw) / expected batch, as in one process.
    """

    def __init__(self, projector: nn.Module, optimizer: torch.optim.Optimizer, *, noise_multiplier: float,
                 max_grad_norm: float, expected_batch_size: int, generator: torch.Generator,
                 clipping: Literal["ghost", "per_sample"] = "ghost", group: Any = None):
        from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
        from opacus.optimizers import (DistributedDPOptimizer, DistributedDPOptimizerFastGradientClipping,
                                       DPOptimizer, DPOptimizerFastGradientClipping)

        self.clipping = clipping
        self.group = group
        distributed = group is not None
        self.params = [p for p in projector.parameters() if p.requires_grad]
        # each rank's share of the expected batch; Opacus divides the reduced sum by the world size
        per_rank = expected_batch_size / group.world if distributed else expected_batch_size
        kw = dict(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                  expected_batch_size=per_rank, loss_reduction="mean", generator=generator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns that secure_mode is off; docs/silo.md says why
            if clipping == "ghost":
                self.module = GradSampleModuleFastGradientClipping(
                    projector, batch_first=True, loss_reduction="sum", max_grad_norm=max_grad_norm,
                    use_ghost_clipping=True)
                self.optimizer = (DistributedDPOptimizerFastGradientClipping if distributed
                                  else DPOptimizerFastGradientClipping)(optimizer, **kw)
            elif clipping == "per_sample":
                self.module = GradSampleModule(projector, batch_first=True, loss_reduction="sum")
                self.optimizer = (DistributedDPOptimizer if distributed else DPOptimizer)(optimizer, **kw)
            else:
                raise PrivacyError(f"privacy.clipping must be 'ghost' or 'per_sample', got {clipping!r}")

    def backward(self, features: torch.Tensor, nll_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Clipped per-sample gradients into the projector; returns the per-sample losses.

        ``nll_fn(z)`` maps projector outputs (B, N, d) to per-sample losses (B,).
        """
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

        p = self.params[0]
        z = self.module(features.to(p.device, p.dtype))
        z_leaf = z.detach().requires_grad_(True)
        losses = nll_fn(z_leaf)
        (g,) = torch.autograd.grad(losses.sum(), z_leaf)
        surrogate = (z * g).flatten(1).sum(1)  # d s_i / dθ == d L_i / dθ
        if self.clipping == "ghost":
            DPTensorFastGradientClipping(self.module, self.optimizer, surrogate, "sum").backward()
        else:
            surrogate.sum().backward()
        return losses.detach()

    def empty_batch(self) -> None:
        """A Poisson batch with no records still takes a (pure-noise) step."""
        for q in self.params:
            q.grad = torch.zeros_like(q)
            if self.clipping == "per_sample":
                q.grad_sample = torch.zeros((0, *q.shape), device=q.device, dtype=q.dtype)

    def accumulate(self) -> None:
        """End of a physical micro-batch that is not the last of its logical (Poisson) batch: keep the
        clipped per-sample gradient sum, add no noise, take no step (Opacus' skip-step mechanism)."""
        self.optimizer.signal_skip_step(True)
        self.optimizer.pre_step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, extra_grad: Callable[[], None] | None = None) -> None:
        """Noise, scale and step; ``extra_grad`` adds data-independent terms (FedProx) after noise
        (and after the ranks' gradients are summed: it is added once)."""
        if self.optimizer.pre_step():
            if self.group is not None:  # all-reduce: Σ ranks' clipped sums + rank 0's noise
                self.group.guard("all-reduce of the DP gradients", self.optimizer.reduce_gradients)
            if extra_grad is not None:
                extra_grad()
            self.optimizer.original_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Remove Opacus' hooks so the projector is a plain module again."""
        self.module._close()


def privacy_status(state_path: str | Path) -> dict[str, str]:
    """What ``silo status`` shows of the accountant's state file (this module writes it): ε spent."""
    path = Path(state_path)
    if not path.exists():
        return {}
    try:
        st = json.loads(path.read_text())
        history = [tuple(st["passes"][k]) for k in sorted(st["passes"], key=int)]
        eps = compute_epsilon(history, float(st["delta"]), st["accountant"])
        return {"privacy spent": f"epsilon {eps:.4g} at delta {st['delta']:g} ({st['accountant']}, "
                                 f"{len(st.get('charges', []))} charges)"}
    except (ValueError, KeyError, TypeError, PrivacyError) as exc:
        return {"privacy spent": f"unreadable ({path}: {exc})"}
