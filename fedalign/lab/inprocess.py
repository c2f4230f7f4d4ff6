"""One whole federation in one process: the real ``aggregator.rounds.Coordinator`` and one real
``silo.participant.SiloParticipant`` per silo (a thread each), talking through
``protocol.transport.InMemoryNetwork`` (every message encoded to wire frames and decoded), with
crypto's real secure sums. The round code is the one ``aggregator serve`` and ``silo train`` run
over ZeroMQ; only the transport and the trainers differ.

This is the one in-process harness: the lab's networked engine (:mod:`fedalign.lab.network`), the
leakage and curious-aggregator analyses (:mod:`fedalign.lab.leakage`, :mod:`fedalign.lab.curious`),
the test suite's federations and the round benchmark all build their runs here, and add what they
need through hooks (a coordinator class, a transport wrapper, a contribution recorder).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from fedalign.aggregator.checkpoint import RunState
from fedalign.aggregator.rounds import Coordinator, RoundPolicy
from fedalign.compliance.eventlog import EventLog
from fedalign.crypto.identity import IdentityKey, generate_identity
from fedalign.fedcmp.strategies import strategy_options
from fedalign.fedcmp.strategy import Strategy, Tensors
from fedalign.protocol.messages import wire_registry
from fedalign.protocol.transport import InMemoryNetwork
from fedalign.silo.participant import SiloOutcome, SiloParticipant, SiloPolicy
from fedalign.silo.store import TrainedUpdate

__all__ = ["InProcessRun", "run_inprocess", "silo_names", "list_log", "DiesAfter", "RecordingStrategy",
           "RandomUpdate", "random_projector"]


def silo_names(n: int) -> list[str]:
    return [f"silo-{i}" for i in range(n)]


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
    """A silo's transport that goes silent for good right after it sent a ``kind`` message (a message
    class or its name) in ``round_id`` and ``phase`` (None: any phase): a crash at that point."""

    def __init__(self, inner, net: InMemoryNetwork, kind, phase: int | None, round_id: int = 0) -> None:
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


def random_projector(d_v: int, d_m: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """An ``mlp2x_gelu``-shaped θ with random weights and zero biases (no model needed)."""
    g = torch.Generator().manual_seed(seed)
    return {"0.weight": torch.randn(d_m, d_v, generator=g) * d_v**-0.5, "0.bias": torch.zeros(d_m),
            "2.weight": torch.randn(d_m, d_m, generator=g) * d_m**-0.5, "2.bias": torch.zeros(d_m)}


class RandomUpdate:
    """A silo's 'training' without compute: a random update per silo and round, scaled by ``scale``;
    with ``fresh_on_retry`` a round trained again draws another (a real silo draws a fresh shard).
    Keeps the μ each training was given (the round's FedProx option) and the number of trainings."""

    def __init__(self, index: int, scale: float = 0.05, *, n_samples: int = 64, fresh_on_retry: bool = True) -> None:
        self.index, self.scale, self.n_samples, self.fresh = index, scale, n_samples, fresh_on_retry
        self.calls = 0
        self.prox_mu: list[float] = []

    def train(self, round_id: int, params: Tensors, *, prox_mu: float = 0.0) -> TrainedUpdate:
        self.calls += 1
        self.prox_mu.append(prox_mu)
        seed = 104_729 * self.index + 1009 * round_id + (self.calls if self.fresh else 0)
        g = torch.Generator().manual_seed(seed)
        return TrainedUpdate({k: self.scale * torch.randn(v.shape, generator=g) for k, v in params.items()},
                             self.n_samples)


class RecordingStrategy:
    """Delegates to a real strategy and keeps every (phase, Sums) the aggregator handed it."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.name, self.n_phases, self.prox_mu = inner.name, inner.n_phases, inner.prox_mu
        self.sums: list[tuple[int, Any]] = []

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def aggregate(self, phase, sums, params, public, server_state):
        self.sums.append((phase, sums))
        return self.inner.aggregate(phase, sums, params, public, server_state)


@dataclass
class InProcessRun:
    """What a run left: the final state (None when the coordinator raised ``error``), each silo's
    outcome or exception, every event (when captured), and each secure-sum input a silo contributed,
    keyed (round, phase, silo) (when recorded)."""

    state: RunState | None
    outcomes: dict[str, SiloOutcome | BaseException]
    events: list[dict]
    contributions: dict[tuple[int, int, str], dict[str, np.ndarray]]
    coordinator: Coordinator
    participants: dict[str, SiloParticipant]
    error: BaseException | None = None
    net: InMemoryNetwork = field(repr=False, default=None)  # type: ignore[assignment]

    def failed(self) -> dict[str, BaseException]:
        return {s: o for s, o in self.outcomes.items() if isinstance(o, BaseException)}


def run_inprocess(
    strategy: Strategy,
    trainers: Mapping[str, Any],
    start: Tensors | RunState,
    *,
    strategy_name: str,
    options: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
    silo_policy: Mapping[str, Any] | Callable[[str], Mapping[str, Any]] | None = None,
    identities: Mapping[str, IdentityKey] | None = None,
    coordinator_class: type[Coordinator] = Coordinator,
    coordinator_kwargs: Mapping[str, Any] | None = None,
    wrap_server: Callable[[Any], Any] | None = None,
    wrap_client: Callable[[str, Any, InMemoryNetwork], Any] | None = None,
    participant_kwargs: Callable[[str], Mapping[str, Any]] | None = None,
    on_participant: Callable[[str, SiloParticipant], None] | None = None,
    on_contribution: Callable[[str, SiloParticipant, int, int, dict[str, np.ndarray]], None] | None = None,
    record_contributions: bool = True,
    capture_events: bool = True,
    join_timeout_s: float = 10.0,
) -> InProcessRun:
    """Run ``strategy`` over the silos named by ``trainers`` (silo -> its RoundTrainer), from
    ``start`` (θ_0, or a RunState to resume), to ``policy["rounds"]`` committed rounds.

    ``strategy_name``: the preset name a RoundStart carries (``fedcmp``, ``fedavg``, ...).
    ``policy`` / ``silo_policy``: RoundPolicy / SiloPolicy fields (``silo_policy`` may depend on the
    silo's name); ``options``: the strategy options a RoundStart carries (default: the strategy's
    own). The coordinator's exception, if any, is returned in ``error`` (every silo is then cut off);
    a silo's, in ``outcomes``. Silos stop once idle after the coordinator returns.
    """
    names = list(trainers)
    ids = dict(identities) if identities is not None else {s: generate_identity() for s in names}
    trusted = {s: ids[s].public_hex for s in names}
    net = InMemoryNetwork(wire_registry())
    state = start if isinstance(start, RunState) else \
        RunState(0, start, strategy.init_public(start), strategy.init_server_state(start))
    lock = threading.Lock()
    events: list[dict] = []
    Log = list_log(events, lock) if capture_events else EventLog
    server = net.server()
    coord = coordinator_class(wrap_server(server) if wrap_server is not None else server, strategy,
                              strategy_name=strategy_name,
                              strategy_options=dict(options) if options is not None else strategy_options(strategy),
                              identities=trusted, policy=RoundPolicy(**(policy or {})), state=state,
                              events=Log(None, source="aggregator"), **(coordinator_kwargs or {}))
    contributions: dict[tuple[int, int, str], dict[str, np.ndarray]] = {}
    outcomes: dict[str, Any] = {}
    participants: dict[str, SiloParticipant] = {}
    stop = threading.Event()

    def silo_policy_for(name: str) -> SiloPolicy:
        sp = silo_policy(name) if callable(silo_policy) else (silo_policy or {})
        return SiloPolicy(**sp)

    for name in names:
        client = net.client(name)
        if wrap_client is not None:
            client = wrap_client(name, client, net)

        def record(r: int, ph: int, inputs: dict[str, np.ndarray], name: str = name) -> None:
            if record_contributions:
                with lock:
                    contributions[(r, ph, name)] = {k: np.array(v, copy=True) for k, v in inputs.items()}
            if on_contribution is not None:
                on_contribution(name, participants[name], r, ph, inputs)

        p = SiloParticipant(name, client, trainers[name], identity=ids[name], trusted=trusted,
                            policy=silo_policy_for(name), events=Log(None, source=name), on_contribution=record,
                            stop=stop, **(participant_kwargs(name) if participant_kwargs is not None else {}))
        participants[name] = p
        if on_participant is not None:
            on_participant(name, p)

    def run_silo(name: str) -> None:
        try:
            outcomes[name] = participants[name].run()
        except BaseException as exc:  # noqa: BLE001 - reported in the result
            outcomes[name] = exc

    threads = [threading.Thread(target=run_silo, args=(s,), daemon=True) for s in names]
    for th in threads:
        th.start()
    final, err = None, None
    try:
        final = coord.run()
    except BaseException as exc:  # noqa: BLE001 - reported in the result
        err = exc
        for s in names:
            net.disconnect(s)
    stop.set()  # silos stop once idle: the rest handle RunEnd first, dropped ones just leave
    for th in threads:
        th.join(timeout=join_timeout_s)
    return InProcessRun(final, outcomes, events, contributions, coord, participants, err, net)

