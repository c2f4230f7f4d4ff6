"""The silo's privacy budget: what each round is charged, what has been spent, and its state file.

One-pass aware: each round trains on a fresh shard with Poisson sampling at ``q = batch / shard
size`` for ``T`` steps, so each record is charged ``(σ, q, T)`` (:class:`RoundCharge`) for its own
shard only. Shards of one pass are disjoint (parallel composition: the pass costs its worst shard,
dominated by ``(min σ, max q, max T)``); passes compose sequentially. The accountant (Opacus RDP
or PRV, :func:`compute_epsilon`) computes ε from that history.

The budget is checked once per round, before the round uses any data: :meth:`PrivacyAccountant.admit`
returns an :class:`Admission` (or raises :class:`PrivacyBudgetExceeded`), and
:meth:`PrivacyAccountant.commit` records it (state file, then ledger) before the update leaves the
trainer, without checking again. ``privacy.json`` is read by :func:`read_state` alone (the
accountant on restart, ``silo status``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from fedalign.compliance.ledger import Ledger
from fedalign.host.atomic import atomic_write_json
from fedalign.protocol.errors import PrivacyBudgetExceeded, PrivacyError

__all__ = ["RoundCharge", "Admission", "AccountantState", "PrivacyAccountant", "compute_epsilon", "read_state",
           "privacy_status"]


@dataclass(frozen=True)
class RoundCharge:
    """One round's DP mechanism on one shard: every record of the shard gets exactly this."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    pass_index: int = 0
    shard_index: int = 0
    shard_size: int = 0


@dataclass(frozen=True)
class Admission:
    """A round's charge the budget admits: ε after it, against the accountant holding
    ``after_charges`` charges (:meth:`PrivacyAccountant.admit`; :meth:`PrivacyAccountant.commit` records it)."""

    charge: RoundCharge
    epsilon: float
    after_charges: int


@dataclass(frozen=True)
class AccountantState:
    """What ``privacy.json`` holds: the accountant, δ, each pass's dominating mechanism, every charge."""

    accountant: str
    delta: float
    passes: dict[int, tuple[float, float, int]]
    charges: list[RoundCharge] = field(default_factory=list)

    def history(self) -> list[tuple[float, float, int]]:
        """The passes in order: the history the accountant composes."""
        return [self.passes[k] for k in sorted(self.passes)]


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
            st = read_state(self.state_path)
            if st.accountant != self.accountant or st.delta != self.delta:
                raise PrivacyError(f"{self.state_path}: saved with accountant={st.accountant}, "
                                   f"delta={st.delta}; config says {self.accountant}, {self.delta}")
            self.passes, self.charges = dict(st.passes), list(st.charges)

    def _history(self, extra: RoundCharge | None = None) -> list[tuple[float, float, int]]:
        passes = self._merged(extra) if extra is not None else self.passes
        return [passes[k] for k in sorted(passes)]

    @property
    def spent(self) -> float:
        """ε spent so far at ``delta`` (record level)."""
        return compute_epsilon(self._history(), self.delta, self.accountant)

    def epsilon_after(self, charge: RoundCharge) -> float:
        return compute_epsilon(self._history(charge), self.delta, self.accountant)

    def admit(self, charge: RoundCharge) -> Admission:
        """The budget check: ``charge`` admitted with the ε it brings the silo to, or
        PrivacyBudgetExceeded if it would pass the budget. A silo calls this once per round, before
        the round uses any data (:meth:`silo.trainer.LocalTrainer.admit`); :meth:`commit` records it."""
        eps = self.epsilon_after(charge)
        if eps > self.epsilon_budget:
            raise PrivacyBudgetExceeded(
                f"privacy budget exhausted: round on shard {charge.shard_index} (pass {charge.pass_index}) "
                f"would bring epsilon to {eps:.4g} > budget {self.epsilon_budget:g} at delta "
                f"{self.delta:g}; already spent {self.spent:.4g}; the silo stops, nothing was sent")
        return Admission(charge, eps, len(self.charges))

    def check(self, charge: RoundCharge) -> float:
        """ε after ``charge``; PrivacyBudgetExceeded if it would pass the budget (:meth:`admit`'s ε)."""
        return self.admit(charge).epsilon

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
        return self.commit(self.admit(charge), now=now)

    def commit(self, admitted: Admission, *, now: float | None = None) -> float:
        """Record an admitted charge (state file, then ledger) without checking the budget again; returns
        ε spent after it. Refused (PrivacyError) when another charge was committed since the admission:
        its ε no longer holds, and nothing is recorded."""
        if admitted.after_charges != len(self.charges):
            raise PrivacyError(f"a charge admitted after {admitted.after_charges} charges cannot be committed after "
                               f"{len(self.charges)}: admit it again")
        charge, eps = admitted.charge, admitted.epsilon
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


def read_state(path: str | Path) -> AccountantState:
    """The accountant's state file (what :meth:`PrivacyAccountant.commit` writes), checked for shape;
    PrivacyError names the file when it is unreadable."""
    p = Path(path)
    try:
        st = json.loads(p.read_text())
        passes = {int(k): (float(v[0]), float(v[1]), int(v[2])) for k, v in st["passes"].items()}
        return AccountantState(str(st["accountant"]), float(st["delta"]), passes,
                               [RoundCharge(**c) for c in st.get("charges", [])])
    except (ValueError, KeyError, TypeError, IndexError, OSError) as exc:
        raise PrivacyError(f"{p}: unreadable accountant state: {exc}") from None


def privacy_status(state_path: str | Path) -> dict[str, str]:
    """What ``silo status`` shows of the accountant's state file: ε spent."""
    path = Path(state_path)
    if not path.exists():
        return {}
    try:
        st = read_state(path)
        eps = compute_epsilon(st.history(), st.delta, st.accountant)  # type: ignore[arg-type]
        return {"privacy spent": f"epsilon {eps:.4g} at delta {st.delta:g} ({st.accountant}, "
                                 f"{len(st.charges)} charges)"}
    except PrivacyError as exc:  # read_state's errors name the file already
        where = "" if str(exc).startswith(str(path)) else f"{path}: "
        return {"privacy spent": f"unreadable ({where}{exc})"}
