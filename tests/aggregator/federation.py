"""Test support: a whole federation in one process over InMemoryNetwork, silos in threads.

Silos train the synthetic toy problem of ``simulation.toy`` (real local SGD, deterministic per
silo and round), so a networked run can be compared with the in-process simulator.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fedalign.aggregator.checkpoint import CheckpointStore, RunState
from fedalign.aggregator.rounds import Coordinator, RoundPolicy
from fedalign.compliance.eventlog import EventLog
from fedalign.protocol.messages import SumScheme, wire_registry
from fedalign.fedcmp.strategies import make_strategy
from fedalign.lab.runner import attach_reference
from fedalign.protocol.transport import InMemoryNetwork
from fedalign.crypto.identity import generate_identity
from fedalign.compliance.ledger import Ledger
from fedalign.silo.federation import witness_heads
from fedalign.silo.participant import SiloOutcome, SiloParticipant, SiloPolicy, TrainedUpdate
from fedalign.lab.toy import ToyFederation, make_toy

MAX_WEIGHT = 64.0


def list_log(events: list[dict], lock: threading.Lock | None = None) -> type[EventLog]:
    """An EventLog class whose instances also append every record to ``events`` (under ``lock``)."""
    lock = lock or threading.Lock()

    class ListLog(EventLog):
        def emit(self, event, **f):
            rec = super().emit(event, **f)
            with lock:
                events.append(rec)
            return rec

    return ListLog


class DiesAfter:
    """A client transport that goes silent for good right after it sent a ``kind`` message (a message
    class or its name) in ``round_id`` and ``phase`` (None: any phase)."""

    def __init__(self, inner, net, kind, phase: int | None, round_id: int = 0) -> None:
        self.inner, self.net, self.phase, self.round_id = inner, net, phase, round_id
        self.kind = kind if isinstance(kind, str) else kind.__name__
        self.name, self.traffic = inner.name, inner.traffic

    def send(self, env):
        n = self.inner.send(env)
        if type(env.message).__name__ == self.kind and env.round == self.round_id \
                and (self.phase is None or env.phase == self.phase):
            self.net.disconnect(self.name)
        return n

    def recv(self, timeout_s):
        return self.inner.recv(timeout_s)

    def close(self):
        self.inner.close()


def toy(n_silos: int, seed: int = 0) -> ToyFederation:
    prob = make_toy(m=6, n=5, n_silos=n_silos, per_silo=32, generator=torch.Generator().manual_seed(seed))
    return ToyFederation(prob, seed=seed, steps=3, lr=0.05, batch=8)


def attach_toy_reference(strategy, fed: ToyFederation, state: RunState | None = None) -> None:
    """Fed-CMP's default reliability "reference" gets the toy's public reference (the lab's hook); a
    resumed run asks for round state.round + 1 next, as `aggregator serve`'s reference process does."""
    attach_reference(strategy, fed)
    fed._reference_calls = 0 if state is None else state.round + 1


class ToyTrainer:
    """Deterministic per silo and round, like the simulator; a round trained again draws a fresh
    batch, as a real silo draws a fresh shard (a silo never puts one update into two sums)."""

    def __init__(self, fed: ToyFederation, index: int, *, fresh_on_retrain: bool = True) -> None:
        self.fed, self.index, self.fresh = fed, index, fresh_on_retrain
        self.attempts: dict[int, int] = {}

    def train(self, round_id: int, params, *, prox_mu: float = 0.0):
        k = self.attempts[round_id] = self.attempts.get(round_id, -1) + 1
        res = self.fed.local_update(params, self.index, round_id + (100_003 * k if self.fresh else 0), prox_mu)
        return TrainedUpdate(res.delta, res.n_samples, None)


class RecordingStrategy:
    """Delegates to a real strategy and records every Sums the aggregator handed it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name, self.n_phases, self.prox_mu = inner.name, inner.n_phases, inner.prox_mu
        self.sums: list[tuple[int, Any]] = []

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def aggregate(self, phase, sums, params, public, server_state):
        self.sums.append((phase, sums))
        return self.inner.aggregate(phase, sums, params, public, server_state)


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
    """An in-process federation over the in-memory transport. With ``ledger_dir`` every party keeps a
    ledger there (the silos' signed); ``aggregator_identity`` signs the aggregator's, and the silos
    check its heads and receipts against ``silos_trust`` (hex; default: that identity's key)."""
    names = names or [f"silo-{i}" for i in range(n_silos)]
    fed = fed or toy(len(names))
    ids = identities or {s: generate_identity() for s in names}
    trusted = {s: k.public_hex for s, k in ids.items()}
    net = InMemoryNetwork(wire_registry())
    strat = RecordingStrategy(make_strategy(strategy, **(options or {})))
    attach_toy_reference(strat.inner, fed, state)
    if state is None:
        params = fed.init_params()
        state = RunState(0, params, strat.init_public(params), strat.init_server_state(params))
    events: list[dict] = []
    Log = list_log(events)

    pol = dict(rounds=rounds, min_silos=3, train_deadline_s=20, step_deadline_s=1.5, heartbeat_timeout_s=2,
               roster_wait_s=10, roster_grace_s=0.3, scheme=scheme,
               allow_insecure_plaintext=scheme == SumScheme.PLAIN_INSECURE)
    pol.update(policy_overrides or {})
    store = CheckpointStore(tmp / "ckpt") if tmp is not None else None
    coord = Coordinator(net.server(), strat, strategy_name=strategy, strategy_options=options or {},
                        identities=trusted, policy=RoundPolicy(**pol), state=state, store=store,
                        events=Log(None, source="aggregator"),
                        ledger=Ledger(ledger_dir / "aggregator.jsonl", identity=aggregator_identity)
                        if ledger_dir is not None else None)
    trusted_agg = silos_trust or (aggregator_identity.public_hex if aggregator_identity is not None else None)
    contributions: dict = {}
    lock = threading.Lock()
    outcomes: dict[str, Any] = {}
    stop = threading.Event()

    def silo(i: int, name: str) -> None:
        client = net.client(name)
        if wrap_client is not None:
            client = wrap_client(name, client, net)

        def record(r, ph, inputs, name=name):
            with lock:
                contributions[(r, ph, name)] = {k: v.copy() for k, v in inputs.items()}

        sp = dict(min_silos=pol["min_silos"], heartbeat_interval_s=0.2, aggregator_timeout_s=30,
                  max_weight=MAX_WEIGHT, allow_insecure_plaintext=scheme == SumScheme.PLAIN_INSECURE,
                  scheme=str(scheme), receipt_timeout_s=receipt_timeout_s)
        sp.update(silo_policy or {})
        p = SiloParticipant(name, client, (make_trainer or ToyTrainer)(fed, i), identity=ids[name], trusted=trusted,
                            policy=SiloPolicy(**sp), state_dir=(tmp / name) if tmp is not None else None,
                            events=Log(None, source=name), on_contribution=record, stop=stop)
        if ledger_dir is not None:  # each silo's own signed ledger, heads exchanged with the aggregator's
            led = Ledger(ledger_dir / f"{name}.jsonl", identity=ids[name])
            led.append("run_start", {"role": "silo", "silo": name, "mode": "federated"}, now=0.0)  # as silo train does
            witness_heads(p, led,
                          aggregator_key=bytes.fromhex(trusted_agg) if trusted_agg else None)
        try:
            outcomes[name] = p.run()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            outcomes[name] = e

    threads = [threading.Thread(target=silo, args=(i, s), daemon=True) for i, s in enumerate(names)]
    for th in threads:
        th.start()
    err = None
    final = None
    try:
        final = coord.run()
    except BaseException as e:  # noqa: BLE001
        err = e
        for s in names:
            net.disconnect(s)
    stop.set()  # silos stop once idle: the rest handle RunEnd first, dropped ones just leave
    for th in threads:
        th.join(timeout=10)
    return Result(final, outcomes, events, contributions, strat, err)
