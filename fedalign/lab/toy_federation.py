"""The toy problem federated in one process (:mod:`fedalign.lab.inprocess`), with checkpoints, ledgers
and fault hooks: what the suite's round tests and the chaos harness run.

Silos train the synthetic toy problem of ``fedalign.lab.toy`` (real local SGD, deterministic per
silo and round), so a networked run can be compared with the in-process simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fedalign.aggregator.checkpoint import CheckpointStore, RunState
from fedalign.compliance.ledger import Ledger
from fedalign.crypto.schemes import scheme_spec
from fedalign.fedcmp.strategies import make_strategy
from fedalign.lab.inprocess import RecordingStrategy, run_inprocess, silo_names
from fedalign.lab.runner import attach_reference
from fedalign.lab.toy import MAX_WEIGHT, ToyFederation, ToyTrainer, small_toy as toy
from fedalign.protocol.messages import SumScheme
from fedalign.protocol.transport import InMemoryNetwork
from fedalign.silo.federation import witness_heads
from fedalign.silo.participant import SiloOutcome, SiloParticipant

__all__ = ["run_federation", "Result", "attach_toy_reference"]


def attach_toy_reference(strategy, fed: ToyFederation, state: RunState | None = None) -> None:
    """Fed-CMP's default reliability "reference" gets the toy's public reference (the lab's hook); a
    resumed run asks for round state.round + 1 next, as `aggregator serve`'s reference process does."""
    attach_reference(strategy, fed)
    fed._reference_calls = 0 if state is None else state.round + 1


@dataclass
class Result:
    state: RunState | None
    silos: dict[str, SiloOutcome | BaseException]
    events: list[dict]
    contributions: dict[tuple[int, int, str], dict[str, np.ndarray]]
    strategy: RecordingStrategy
    error: BaseException | None = None


def run_federation(
    n_silos: int = 3,
    rounds: int = 2,
    *,
    strategy: str = "fedcmp",
    options: dict | None = None,
    scheme: SumScheme = SumScheme.SECAGG,
    policy_overrides: dict | None = None,
    tmp: Path | None = None,
    state: RunState | None = None,
    wrap_client: Callable[[str, Any, InMemoryNetwork], Any] | None = None,
    silo_policy: dict | None = None,
    names: list[str] | None = None,
    identities: dict | None = None,
    fed: ToyFederation | None = None,
    ledger_dir: Path | None = None,
    make_trainer: Callable[[ToyFederation, int], Any] | None = None,
    aggregator_identity: Any = None,
    silos_trust: str | None = None,
    receipt_timeout_s: float = 5.0,
) -> Result:
    """The toy problem over :func:`fedalign.lab.inprocess.run_inprocess`. With ``ledger_dir`` every party
    keeps a ledger there (the silos' signed); ``aggregator_identity`` signs the aggregator's, and the silos
    check its heads and receipts against ``silos_trust`` (hex; default: that identity's key)."""
    names = names or silo_names(n_silos)
    fed = fed or toy(len(names))
    strat = RecordingStrategy(make_strategy(strategy, **(options or {})))
    attach_toy_reference(strat.inner, fed, state)
    plain = scheme_spec(str(scheme)).insecure
    pol = dict(rounds=rounds, min_silos=3, train_deadline_s=20, step_deadline_s=1.5, heartbeat_timeout_s=2,
               roster_wait_s=10, roster_grace_s=0.3, scheme=scheme, allow_insecure_plaintext=plain)
    pol.update(policy_overrides or {})
    sp = dict(min_silos=pol["min_silos"], heartbeat_interval_s=0.2, aggregator_timeout_s=30, max_weight=MAX_WEIGHT,
              allow_insecure_plaintext=plain, scheme=str(scheme), receipt_timeout_s=receipt_timeout_s)
    sp.update(silo_policy or {})
    coord_kw = {}
    if tmp is not None:
        coord_kw["store"] = CheckpointStore(tmp / "ckpt")
    if ledger_dir is not None:
        coord_kw["ledger"] = Ledger(ledger_dir / "aggregator.jsonl", identity=aggregator_identity)
    trusted_agg = silos_trust or (aggregator_identity.public_hex if aggregator_identity is not None else None)

    def with_ledger(name: str, p: SiloParticipant) -> None:
        if ledger_dir is None:
            return
        led = Ledger(ledger_dir / f"{name}.jsonl", identity=p.identity)  # each silo's own signed ledger
        led.append("run_start", {"role": "silo", "silo": name, "mode": "federated"}, now=0.0)  # as silo train does
        witness_heads(p, led, aggregator_key=bytes.fromhex(trusted_agg) if trusted_agg else None)

    run = run_inprocess(
        strat, {s: (make_trainer or ToyTrainer)(fed, i) for i, s in enumerate(names)},
        state if state is not None else fed.init_params(),
        strategy_name=strategy, options=options or {}, policy=pol, silo_policy=sp, identities=identities,
        coordinator_kwargs=coord_kw, wrap_client=wrap_client,
        participant_kwargs=(lambda s: {"state_dir": tmp / s}) if tmp is not None else None,
        on_participant=with_ledger)
    return Result(run.state, run.outcomes, run.events, run.contributions, strat, run.error)
