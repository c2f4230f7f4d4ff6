"""The silo's side of a federated run over any :class:`ClientTransport`.

It answers the aggregator's :class:`RoundStart` by training one fresh shard (the trainer
charges the DP accountant before the update exists outside it), then takes part in each
phase's secure sum with its contribution computed by the strategy. Before joining a sum it
checks the participants against its own trusted roster and policy (``min_silos``, the
threshold, the scheme its own config pins, no plain sums unless allowed): a sum over too few
silos would reveal its update. An update's input for one (round, phase) goes into at most one
sum (recorded on disk before it leaves, so also across restarts): two sums over different silo
sets with the same input reveal its difference. The site policy adds its own checks
(``extra_sum_checks``, ``extra_round_checks``; ``silo.audit``), and refusals and releases are
reported through ``on_refusal`` / ``on_release`` (the ledger).

Heartbeats go out while idle and while training. The carried silo state (Fed-CMP's
error-feedback residual) is committed only when the aggregator reports the round committed
with this silo among the survivors, and persisted atomically; a round restarted by a
resumed aggregator with the same θ_t reuses the update already trained (no second charge).
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch

from fedalign.fedcmp.core import RHO
from fedalign.fedcmp.phases import phase_allows_dropouts, sum_inputs
from fedalign.fedcmp.strategies import make_strategy
from fedalign.fedcmp.pin import StrategyPin, pin_violations
from fedalign.fedcmp.strategy import Strategy, Tensors, contribution_problems, silo_weight
from fedalign.projector import layout_mismatch
from fedalign.protocol.errors import (AggregatorInputError, ConfigError, DataError, FedAlignError, InsecureModeRefused,
                                      PrivacyBudgetExceeded, ProtocolError)
from fedalign.compliance.eventlog import EventLog
from fedalign.protocol.messages import (Heartbeat, JoinReply, LeaveNotice, LedgerClose, LedgerReceipt, ModelDeclaration,
                                        RoundEnd, RoundStart, RunEnd, Stage, SumStart, UpdateReady)
from fedalign.protocol.transport import ClientTransport
from fedalign.protocol.view import phase_view, round_view
from fedalign.protocol.wire import Envelope
from fedalign.silo.inbound import params_problems, tensor_problems
from fedalign.silo.store import FederationStore, TrainedUpdate, params_digest

from fedalign.crypto.config import SecureSumConfig
from fedalign.crypto.errors import SecureSumError
from fedalign.crypto.identity import IdentityKey, Roster
from fedalign.crypto.messages import INPUT_TYPES, Message as CryptoMessage, input_nbytes
from fedalign.crypto.schemes import scheme_spec
from fedalign.crypto.secure_sum import SiloSecureSum



__all__ = ["TrainedUpdate", "RoundTrainer", "SiloPolicy", "SiloOutcome", "SiloParticipant", "params_digest"]


class RoundTrainer(Protocol):
    """What the runtime needs from local training (``silo.trainer`` behind an adapter)."""

    def train(self, round_id: int, params: Tensors, *, prox_mu: float = 0.0) -> TrainedUpdate:
        """Train a fresh shard from ``params``; raise PrivacyBudgetExceeded before anything is spent.

        ``prox_mu``: the round's strategy's FedProx weight (the aggregator's strategy options, inside
        this silo's pin), the only local-training setting a strategy carries."""

    # Optional: ``describe() -> ModelDeclaration`` (the projector's shapes and the model ids) makes
    # the silo declare its model at join, so the aggregator refuses a mismatch before any round.


@dataclass(frozen=True)
class SiloPolicy:
    """The silo's own rules, whatever the aggregator asks."""

    min_silos: int = 3
    heartbeat_interval_s: float = 2.0
    aggregator_timeout_s: float = 600.0
    wait_report_s: float = 10.0  # say (event) that the aggregator has not answered, this often
    max_weight: float = 512.0
    allow_insecure_plaintext: bool = False
    dp_enabled: bool = False
    # The one secure-sum scheme this silo's own configuration pins (docs/design.md §5): a SumStart asking
    # for another one is refused, whatever the aggregator says ("plain" also needs the permission).
    scheme: str = "secagg"
    # The strategy and options this silo accepts ([strategy] of silo.toml): a RoundStart naming
    # another is refused. None (library use, the in-process simulator): any strategy, but under DP
    # reliability is still refused (a silo's ρ weighs its update inside the sums).
    strategy: StrategyPin | None = None
    receipt_timeout_s: float = 30.0  # after RunEnd: wait this long for the receipt of the final ledger head


@dataclass
class SiloOutcome:
    params: Tensors | None
    rounds_done: int
    committed: list[int]
    reason: str
    first_params: Tensors | None = None  # θ of the first round this silo saw (for before/after metrics)
    first_round: int | None = None
    ledger_closed: str = ""  # how the ledger was closed with the aggregator (the exit line says it)


def _to_torch(a: Mapping[str, np.ndarray]) -> Tensors:
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in a.items()}


@dataclass
class _Round:
    round: int
    params: Tensors
    public: Tensors
    seed: bytes
    strategy: Strategy
    delta: Tensors
    weight: float
    digest: str = ""
    update_digest: str = ""  # of Δ itself: "the same input" across restarts and retrained shards
    joined: dict[int, int] = field(default_factory=dict)  # phase -> the one instance this update joined
    released: dict[str, Any] = field(default_factory=dict)  # what the open sum's input is (for the ledger)
    exposed: bool = False  # its input went into a sum: never reuse this update in another one
    view: bytes = b""  # protocol.view.round_view of this round's RoundStart
    completed: dict[int, tuple[str, ...]] = field(default_factory=dict)  # phase -> the set its sum verifiably held
    pending_state: Tensors | None = None
    sum: SiloSecureSum | None = None
    instance: int = -1
    phase: int = -1


MAX_ROUND = 2 ** 31  # a round id at or over this is refused (no federation runs that many rounds)


class _LocalFailure(Exception):
    """Carries an untyped failure of this silo's own training past the bad-input handler (its cause)."""


class SiloParticipant:
    """One silo in a federated run; :meth:`run` returns when the aggregator ends the run."""

    def __init__(
        self,
        name: str,
        transport: ClientTransport,
        trainer: RoundTrainer,
        *,
        identity: IdentityKey,
        trusted: Mapping[str, str],
        policy: SiloPolicy = SiloPolicy(),
        state_dir: Path | None = None,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_contribution: Callable[[int, int, dict[str, np.ndarray]], None] | None = None,
        stop: threading.Event | None = None,
        address: str = "the aggregator",
    ) -> None:
        if name not in trusted:
            raise ProtocolError(f"silo {name!r} is not in its own trusted roster")
        self.name = name
        self.t = transport
        self.trainer = trainer
        self.identity = identity
        self.trusted = dict(trusted)
        self.policy = policy
        self.store = FederationStore(state_dir)
        self.events = events or EventLog(None, source=name)
        self.clock = clock
        self.on_contribution = on_contribution
        self._answered: tuple[int, set[str]] = (-1, set())  # (instance, message types handed to its sum)
        self.stop = stop or threading.Event()
        self.committed, self.silo_state = self.store.load_state()
        # a round this silo took part in before it was killed: committed iff the next RoundStart says so
        self._disk_pending = self.store.load_pending()
        self.committed_rounds: list[int] = []
        self.cur: _Round | None = None
        self._last_beat = -1e18
        self._strategies: dict[str, Strategy] = {}
        self._first: tuple[Tensors | None, int | None] = (None, None)
        # more refusal rules (the site policy's, silo.audit) and where refusals are recorded
        self.extra_sum_checks: list[Callable[[SumStart], list[str]]] = []
        self.extra_round_checks: list[Callable[[RoundStart], list[str]]] = []
        self.on_refusal: Callable[[dict[str, Any]], None] | None = None
        self.on_release: Callable[[dict[str, Any]], None] | None = None  # before an input message leaves
        self.max_rounds: int | None = None  # the site policy's run.max_rounds: local trainings, at most
        # ledger heads witnessed across parties (docs/design.md §10): this silo's head goes out with each
        # UpdateReady; the aggregator's head, which arrives with each RoundStart, is recorded here
        self.ledger_head: Callable[[], dict[str, Any]] | None = None
        self.on_peer_head: Callable[[str, dict[str, Any]], None] | None = None
        # closing the ledger at RunEnd: on_run_end writes run_end; this silo's final head leaves with
        # LedgerClose; on_receipt records the aggregator's LedgerReceipt (None: none came) and says how
        self.on_run_end: Callable[[RunEnd, "SiloOutcome"], None] | None = None
        self.on_receipt: Callable[[dict[str, Any], LedgerReceipt | None], str] | None = None
        self.address = address
        describe = getattr(trainer, "describe", None)
        self.declaration: ModelDeclaration | None = describe() if callable(describe) else None
        self.joined = False  # the aggregator answered (JoinReply accepted, or a RoundStart)
        self._last_params: tuple[Tensors | None, int] = (None, 0)  # θ of the latest RoundStart, its round

    # ------------------------------------------------------------------ plumbing
    def _send(self, msg: Any, round_id: int, *, instance: int = -1, phase: int = -1) -> None:
        self.t.send(Envelope(round_id, instance, phase, self.name, msg))

    def _beat(self, stage: Stage, *, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last_beat >= self.policy.heartbeat_interval_s:
            if self.declaration is not None and not self.joined:  # until answered (the aggregator may start later)
                self._send(self.declaration, max(self.committed, 0))
            self._send(Heartbeat(stage, self.committed), max(self.committed, 0))
            self._last_beat = now

    def _report_wait(self, now: float, last_contact: float) -> None:
        """An event naming the address while the aggregator stays silent (still retrying)."""
        silent = now - last_contact
        self.events.emit("waiting_for_aggregator", address=self.address, silent_s=round(silent),
                         answered_before=self.joined,
                         gives_up_in_s=round(max(0.0, self.policy.aggregator_timeout_s - silent)))

    def _outcome_so_far(self, reason: str) -> SiloOutcome:
        """What this silo keeps when it stops early: θ of the latest round it was sent (every round
        committed before it), so the finished work is evaluated and exported, not lost."""
        params, round_id = self._last_params
        return SiloOutcome(params, round_id, self.committed_rounds, reason, *self._first)

    def _strategy(self, name: str, options: Mapping[str, Any]) -> Strategy:
        """The round's strategy: the aggregator's name and options, once :meth:`_strategy_problems` found
        them inside this silo's pin (so they are the silo's own choice, or inside its ranges)."""
        key = json.dumps([name, dict(options)], sort_keys=True, default=str)
        if key not in self._strategies:
            self._strategies[key] = make_strategy(name, **dict(options))
        return self._strategies[key]

    def _strategy_problems(self, m: RoundStart) -> list[str]:
        pin = self.policy.strategy
        if pin is not None:
            return pin_violations(pin, m.strategy, m.strategy_options)
        reliability = m.strategy_options.get("reliability", "off") if isinstance(m.strategy_options, Mapping) else "off"
        if self.policy.dp_enabled and reliability not in ("off", None):
            return [f"reliability {reliability!r} under DP: this silo pins no strategy that allows it"]
        return []

    def _refused(self, what: str, round_id: int, reason: str, **fields: Any) -> None:
        """Log a refused request (event, and the ledger through ``on_refusal``); no state changed."""
        self.events.emit("sum_refused" if what == "SumStart" else "round_refused", round=round_id,
                         reason=reason, **{k: v for k, v in fields.items() if k in ("phase", "instance")})
        if self.on_refusal is not None:
            self.on_refusal({"request": what, "round": round_id, "reason": reason, **fields})

    # ------------------------------------------------------------------ the loop
    def run(self) -> SiloOutcome:
        self.events.emit("silo_started", committed_round=self.committed, address=self.address)
        self._beat(Stage.JOIN, force=True)
        last_contact = self.clock()
        next_report = last_contact + self.policy.wait_report_s
        while True:
            env = self.t.recv(self.policy.heartbeat_interval_s / 2)
            now = self.clock()
            if env is None:
                if self.stop.is_set():  # checked when idle, so queued messages are handled first
                    break
                if now - last_contact > self.policy.aggregator_timeout_s:
                    raise ProtocolError(
                        f"silo {self.name}: no message from the aggregator at {self.address} for "
                        f"{self.policy.aggregator_timeout_s:g}s; check that `aggregator serve` runs there and that "
                        "federation.aggregator and federation.aggregator_public_key name it"
                    )
                if now >= next_report:
                    self._report_wait(now, last_contact)
                    # before the first answer every wait_report_s; later (others may be training) less often
                    next_report = now + self.policy.wait_report_s * (1 if not self.joined else 3)
                self._beat(Stage.SUM if self.cur is not None else Stage.JOIN)
                continue
            last_contact = now
            next_report = now + self.policy.wait_report_s * (1 if not self.joined else 3)
            m = env.message
            try:
                if isinstance(m, JoinReply):
                    self._on_join_reply(m)
                elif isinstance(m, RoundStart):
                    self._on_round_start(m)
                elif isinstance(m, SumStart):
                    self._on_sum_start(env, m)
                elif isinstance(m, CryptoMessage):
                    self._on_crypto(env, m)
                elif isinstance(m, RoundEnd):
                    self._on_round_end(m)
                elif isinstance(m, RunEnd):
                    shapes = self.declaration.shapes if self.declaration is not None else None
                    bad = params_problems("RunEnd.params", m.params, shapes)
                    if bad:
                        raise AggregatorInputError(f"silo {self.name}: RunEnd: " + "; ".join(bad)
                                                   + " (nothing was evaluated or exported)")
                    self.events.emit("run_end", rounds_done=m.rounds_done, reason=m.reason)
                    out = SiloOutcome(_to_torch(m.params), m.rounds_done, self.committed_rounds, m.reason,
                                      *self._first)
                    self._close_ledger(m, out)
                    return out
                else:
                    self.events.emit("message_ignored", type=type(m).__name__, round=env.round)
            except DataError as e:  # one pass over the data is spent: leave cleanly, keep what finished
                self._send(LeaveNotice(f"data spent: {e}"), env.round)
                self.events.emit("left", reason="data spent", detail=str(e))
                return self._outcome_so_far("data spent")
            except PrivacyBudgetExceeded as e:  # nothing of this round was trained or sent
                self._send(LeaveNotice(f"privacy budget exhausted: {e}"), env.round)
                self.events.emit("left", reason="privacy budget exhausted", detail=str(e))
                return self._outcome_so_far(f"privacy budget exhausted: {e}")
            except ConfigError as e:  # this silo's model does not fit the run: leave before training
                self._send(LeaveNotice(f"refused: {e}"), env.round)
                self.events.emit("left", reason="model mismatch", detail=str(e))
                raise
            except InsecureModeRefused as e:
                self._send(LeaveNotice(f"refused: {e}"), env.round)
                raise
            except _LocalFailure as e:  # this silo's own training failed: not the aggregator's input
                raise e.__cause__ from None  # type: ignore[misc]
            except AggregatorInputError as e:
                self._leave_on_bad_input(env, e)
                raise
            except FedAlignError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever a message's content broke is a typed refusal
                err = AggregatorInputError(
                    f"silo {self.name}: could not use the aggregator's {type(m).__name__} (round {env.round}, "
                    f"phase {env.phase}): {type(e).__name__}: {str(e)[:200]}")
                self._leave_on_bad_input(env, err)
                raise err from e
            self._beat(Stage.SUM if self.cur is not None else Stage.JOIN)
        self._send(LeaveNotice("stopped by the operator"), max(self.committed, 0))
        self.events.emit("left", reason="stopped")
        return SiloOutcome(None, self.committed + 1, self.committed_rounds, "stopped")

    def _leave_on_bad_input(self, env: Envelope, e: AggregatorInputError) -> None:
        """Refuse the aggregator's unusable message: a refusal (ledger), a LeaveNotice, then the silo leaves."""
        self._refused(type(env.message).__name__, env.round, str(e), phase=env.phase)
        self._send(LeaveNotice(f"refused: {e}"), env.round)
        self.events.emit("left", reason="unusable aggregator input", detail=str(e))

    # ------------------------------------------------------------------ handlers
    def _close_ledger(self, m: RunEnd, out: SiloOutcome) -> None:
        """The run is over: write run_end (``on_run_end``), send the final head (LedgerClose; an empty
        one without a ledger), and wait up to ``receipt_timeout_s`` for the aggregator's receipt."""
        if self.on_run_end is not None:
            self.on_run_end(m, out)
        head = self.ledger_head() if self.ledger_head is not None else {}
        self._send(LedgerClose(head), m.rounds_done)
        if not head:
            return
        deadline = self.clock() + self.policy.receipt_timeout_s
        receipt: LedgerReceipt | None = None
        while receipt is None and self.clock() < deadline:
            try:
                env = self.t.recv(min(0.25, max(0.0, deadline - self.clock())))
            except ProtocolError as e:
                self.events.emit("message_dropped", reason=str(e), stage="closing the ledger")
                continue
            if env is not None and isinstance(env.message, LedgerReceipt):
                receipt = env.message
        out.ledger_closed = self.on_receipt(head, receipt) if self.on_receipt is not None else ""
        self.events.emit("ledger_closed" if receipt is not None else "ledger_not_closed", detail=out.ledger_closed)

    def _commit_previous(self, m: RoundStart) -> None:
        """A new round starts: the previous one was committed; keep our state iff we were in it."""
        cur = self.cur
        if cur is not None and cur.round < m.round and cur.round > self.committed:
            if self.name in m.previous_survivors and cur.round == m.round - 1 and cur.pending_state is not None:
                self._commit(cur.round, cur.pending_state)
            self.cur = None
        pend, self._disk_pending = self._disk_pending, None
        if cur is None and pend is not None and pend[0] == m.round - 1 > self.committed \
                and self.name in m.previous_survivors:
            self._commit(pend[0], pend[1])  # restarted after its last round was committed without it knowing

    def _commit(self, round_id: int, state: Tensors) -> None:
        self.silo_state = state
        self.committed = round_id
        self.committed_rounds.append(round_id)
        self.store.save_state(round_id, state)
        self.events.emit("round_committed", round=round_id)

    def _on_join_reply(self, m: JoinReply) -> None:
        if not m.accepted:
            self.events.emit("refused", address=self.address, reason=m.reason)
            raise ConfigError(f"the aggregator at {self.address} refused silo {self.name}: {m.reason}")
        first = not self.joined
        self.joined = True
        if not first and m.deadline_s < 0:
            return  # a plain "heard you again" (e.g. a restarted aggregator): nothing to report
        self.events.emit("joined" if first else "aggregator_waiting", address=self.address,
                         connected=list(m.connected), missing=list(m.missing),
                         **({"gives_up_in_s": round(m.deadline_s)} if m.deadline_s >= 0 else {}))

    def _check_shapes(self, m: RoundStart) -> None:
        """θ_t must fit this silo's projector: refuse before a shard is drawn or ε is spent."""
        d = self.declaration
        if d is None:
            return
        diff = layout_mismatch(d.shapes, {k: v.shape for k, v in m.params.items()})
        if diff is not None:
            first, ours, theirs = diff
            raise ConfigError(
                f"silo {self.name}: the aggregator at {self.address} sent a projector whose {first} is {theirs}, "
                f"but this silo's ({d.projector} for vision {d.vision_tower!r} d={d.d_vision}, LM {d.llm!r} "
                f"d={d.d_model}) has {ours}; nothing was trained. Make the aggregator's θ_0 with "
                "`silo describe` and `aggregator init`, or fix [model]")

    def _on_round_start(self, m: RoundStart) -> None:
        if m.ledger_head and self.on_peer_head is not None:
            self.on_peer_head("aggregator", dict(m.ledger_head))
        self._commit_previous(m)
        if m.round <= self.committed:
            self.events.emit("late_message_ignored", type="RoundStart", round=m.round, committed=self.committed)
            return
        pinned = self._strategy_problems(m)
        site = [p for check in self.extra_round_checks for p in check(m)]
        problems = pinned + site
        if problems:  # this silo's pinned strategy or its site policy forbids this round: refuse, record, leave
            by = " and ".join(w for w, got in (("the silo's [strategy]", pinned), ("site policy", site)) if got)
            self._refuse_round(m, f"silo {self.name}: refused RoundStart round {m.round} ({by}): " + "; ".join(problems),
                               f"refused by {by}: {'; '.join(problems)}")
        self._check_shapes(m)
        self.joined = True
        strat = self._strategy(m.strategy, m.strategy_options)
        if strat.n_phases != m.n_phases:
            raise ProtocolError(f"silo {self.name}: strategy {m.strategy} has {strat.n_phases} phases, "
                                f"the aggregator announced {m.n_phases}")
        bad = params_problems("RoundStart.params", m.params, None) + tensor_problems("RoundStart.public", m.public)
        if m.round >= MAX_ROUND:  # round ids seed the shard and the noise: keep them in every RNG's range
            bad.insert(0, f"round id {m.round} is over {MAX_ROUND - 1}")
        params, public = _to_torch(m.params), _to_torch(m.public)
        if not bad:  # the round's public values, as phase 0 will use them: names, shapes, dtype, bases
            bad = strat.public_violations(0, params, public)
        if bad:  # before a shard is drawn or ε is spent
            raise AggregatorInputError(f"silo {self.name}: RoundStart round {m.round}: " + "; ".join(bad[:3])
                                       + " (nothing was trained)")
        if self._first[0] is None:
            self._first = (params, m.round)
        self._last_params = (params, m.round)
        if self.silo_state is None:
            self.silo_state = strat.init_silo_state(params)
        digest = params_digest(params)
        # A repeated round (aggregator restart or retry) reuses the update only if it never went into a
        # sum: two sums over different silo sets with the same input would reveal their difference.
        upd = None
        cur = self.cur
        if cur is not None and cur.round == m.round and cur.digest == digest and not cur.exposed:
            upd = TrainedUpdate(cur.delta, 0, None)
            weight = cur.weight
            self.events.emit("update_reused", round=m.round)
        else:
            upd = self.store.load_update(m.round, digest)
            if upd is not None:
                self.events.emit("update_reused", round=m.round)
            else:
                self._within_max_rounds(m)
                self.store.note_training(m.round)  # before any data is drawn: a crash mid-training counts too
                self.events.emit("training_started", round=m.round)
                upd = self._train(m.round, params, strat.prox_mu)
                self.store.save_update(m.round, digest, upd)
                self.events.emit("training_done", round=m.round, n_samples=upd.n_samples, epsilon=upd.epsilon,
                                 **{k: float(v) for k, v in upd.metrics.items()})
            weight = silo_weight(int(upd.n_samples), self.policy.max_weight)
        self.cur = _Round(m.round, params, public, m.seed, strat, upd.delta, weight, digest=digest,
                          update_digest=params_digest(upd.delta), view=round_view(m, bytes.fromhex(digest)))
        head = self.ledger_head() if self.ledger_head is not None else {}
        self._send(UpdateReady(m.round, float(upd.epsilon or 0.0), head), m.round)

    def _within_max_rounds(self, m: RoundStart) -> None:
        """The site policy's run.max_rounds bounds the local trainings (a retried round trains again on a
        fresh shard, so it counts again), not round ids: refuse, record and leave before the next one."""
        mx = self.max_rounds
        done = len(self.store.trained())
        if mx is None or done < mx:
            return
        self._refuse_round(m, f"silo {self.name}: refused RoundStart round {m.round} (site policy): this silo already "
                              f"trained {done} round(s), policy run.max_rounds is {mx}",
                           f"refused by site policy: run.max_rounds {mx} reached ({done} trained)")

    def _refuse_round(self, m: RoundStart, reason: str, notice: str) -> None:
        """A RoundStart this silo's own rules forbid: recorded (ledger), a LeaveNotice, then PolicyRefused."""
        from fedalign.compliance.policy import PolicyRefused

        self._refused("RoundStart", m.round, reason)
        self._send(LeaveNotice(notice), m.round)
        raise PolicyRefused(reason)

    def _train(self, round_id: int, params: Tensors, prox_mu: float) -> TrainedUpdate:
        """Train in a worker thread while the main thread keeps heartbeating."""
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="local-training") as ex:
            fut = ex.submit(self.trainer.train, round_id, params, prox_mu=prox_mu)
            while True:
                try:
                    return fut.result(timeout=self.policy.heartbeat_interval_s)
                except concurrent.futures.TimeoutError:
                    self._beat(Stage.TRAIN, force=True)
                except FedAlignError:
                    raise
                except Exception as e:  # noqa: BLE001 - kept apart from failures on the aggregator's input
                    raise _LocalFailure() from e

    def _check_sum(self, m: SumStart, cur: _Round) -> None:
        """Refuse (ProtocolError) a sum this silo's own rules forbid, before any state changes."""
        p = self.policy
        parts = m.participants
        if scheme_spec(m.scheme).insecure and not p.allow_insecure_plaintext:
            raise InsecureModeRefused(
                f"silo {self.name}: the aggregator asked for {m.scheme} (unprotected) sums; this silo's policy "
                "and command line do not allow insecure plaintext"
            )
        problems = []
        if str(m.scheme) != p.scheme:
            # docs/design.md §5: the scheme is pinned by the silo, never chosen by the aggregator (a ckks sum
            # in a secagg federation lets the aggregator hand the decryptor one silo's ciphertext)
            problems.append(f"scheme {m.scheme} is not this silo's configured scheme {p.scheme}")
        if self.name not in parts:
            problems.append("this silo is not a participant")
        unknown = sorted(set(parts) - set(self.trusted))
        if unknown:
            problems.append(f"participants {unknown} are not in the trusted roster")
        if len(parts) < p.min_silos:
            problems.append(f"{len(parts)} participants, policy min_silos is {p.min_silos}")
        if m.threshold < min(p.min_silos, len(parts)):
            problems.append(f"threshold {m.threshold} is under policy min_silos {p.min_silos}")
        # one participant set per round: a later phase sums exactly the set phase 0 verifiably summed,
        # and only after this silo saw the previous phase complete (else ΣA − ΣP isolates a silo)
        n_phases = cur.strategy.n_phases
        if m.phase >= n_phases:
            problems.append(f"phase {m.phase} is out of range: strategy {cur.strategy.name} has {n_phases}")
        elif m.phase > 0:
            if m.phase - 1 not in cur.completed:
                problems.append(f"phase {m.phase - 1} of this round did not complete for this silo")
            elif tuple(sorted(parts)) != cur.completed[0]:
                problems.append(f"participants {sorted(parts)} are not the set phase 0 summed "
                                f"{list(cur.completed[0])}; a round sums one set")
        # docs/design.md §5: one (round, phase) input goes into at most one sum; two sums over different
        # silo sets with the same input reveal the difference (in memory, and across restarts)
        if m.phase in cur.joined:
            problems.append(f"this silo already joined sum instance {cur.joined[m.phase]} for round {m.round} "
                            f"phase {m.phase}; an input goes into one sum only")
        else:
            sent = self.store.input_sent(m.round, m.phase, cur.update_digest)
            if sent is not None:
                problems.append(f"this update's input for round {m.round} phase {m.phase} already went into "
                                f"sum instance {sent} (before a restart); an input goes into one sum only")
        for extra in self.extra_sum_checks:
            problems += extra(m)
        if problems:
            raise ProtocolError(f"silo {self.name}: refused SumStart round {m.round} phase {m.phase} "
                                f"instance {m.instance}: " + "; ".join(problems))

    def _on_sum_start(self, env: Envelope, m: SumStart) -> None:
        cur = self.cur
        if cur is None or m.round != cur.round:
            self.events.emit("late_message_ignored", type="SumStart", round=m.round, instance=m.instance)
            return
        try:
            self._check_sum(m, cur)
        except ProtocolError as e:
            self._refused("SumStart", m.round, str(e), phase=m.phase, instance=m.instance, scheme=str(m.scheme),
                          participants=list(m.participants))
            return
        public = {**cur.public, **_to_torch(m.public)}
        # public values checked before they touch the update: declared names and shapes, finite, the
        # bases orthonormal; then the contribution against its declared spec
        problems = cur.strategy.public_violations(m.phase, cur.params, public)
        contrib, new_state = {}, None
        if not problems:
            contrib, new_state = cur.strategy.silo_contribution(m.phase, cur.delta, cur.weight, public,
                                                                self.silo_state or {})
            problems = contribution_problems(cur.strategy.contribution_spec(m.phase, cur.params, public), contrib)
        if problems:
            reason = (f"silo {self.name}: refused SumStart round {m.round} phase {m.phase} instance {m.instance}: "
                      + "; ".join(problems))
            self._refused("SumStart", m.round, reason, phase=m.phase, instance=m.instance, scheme=str(m.scheme),
                          participants=list(m.participants))
            return
        cur.joined[m.phase] = m.instance  # before anything leaves: a second SumStart for this phase is refused
        cur.pending_state = new_state
        self.store.save_pending(cur.round, new_state)  # before this phase's input leaves
        rho = {k.rsplit("/", 1)[0]: round(float(v.reshape(-1)[0]), 4) for k, v in new_state.items()
               if k.endswith("/" + RHO)} if m.phase == cur.strategy.n_phases - 1 else {}
        if rho:  # reliability: this silo's own ρ per matrix (private: only its log has it; the sums carry w·ρ)
            self.events.emit("reliability", round=m.round, rho=rho)
        inputs, clipped = sum_inputs(contrib, m.clip)  # the simulator converts with this same function
        if clipped:
            self.events.emit("contribution_clipped", round=m.round, phase=m.phase, values=clipped, clip=m.clip)
        if self.on_contribution is not None:
            self.on_contribution(m.round, m.phase, inputs)
        cur.released = {"round": m.round, "phase": m.phase, "instance": m.instance, "scheme": str(m.scheme),
                        "participants": list(m.participants), "threshold": m.threshold,
                        "shapes": {k: list(np.shape(v)) for k, v in inputs.items()}}
        round_set = tuple(sorted(m.participants)) if m.phase == 0 else cur.completed[0]
        cfg = SecureSumConfig(
            mode=str(m.scheme), threshold=m.threshold, clip=m.clip,
            allow_insecure_plaintext=scheme_spec(m.scheme).insecure and self.policy.allow_insecure_plaintext,
            neighbours=m.neighbours or None, graph_seed=cur.seed, ckks_poly_modulus=m.ckks_poly_modulus,
            view=phase_view(cur.view, m, round_set),
            allow_dropouts=phase_allows_dropouts(cur.strategy.n_phases, m.phase, scheme_spec(m.scheme).signed_survivors),
        )
        roster = Roster({s: self.trusted[s] for s in m.participants})
        try:
            ss = SiloSecureSum(self.identity, self.name, roster, m.round, m.instance, cfg)
            ss.set_inputs(inputs)
            out = ss.start()
        except SecureSumError as e:
            self.events.emit("sum_failed", round=m.round, phase=m.phase, reason=str(e))
            return
        cur.sum, cur.instance, cur.phase = ss, m.instance, m.phase
        self.events.emit("sum_joined", round=m.round, phase=m.phase, instance=m.instance,
                         participants=list(m.participants))
        self._note_completed(cur)  # plain sums are over once the input left
        self._send_sum(out)

    def _on_crypto(self, env: Envelope, m: CryptoMessage) -> None:
        cur = self.cur
        if cur is None or cur.sum is None or m.round_id != cur.round or m.instance_id != cur.instance:
            self.events.emit("late_message_ignored", type=type(m).__name__, round=m.round_id, instance=m.instance_id)
            return
        if self._answered[0] != m.instance_id:
            self._answered = (m.instance_id, set())
        if type(m).__name__ in self._answered[1]:
            # a step this silo already answered: a duplicate (or a replay); handing it to the sum would
            # make the sum fail and this silo drop out, so it is ignored (the sum answers each step once)
            self.events.emit("duplicate_message_ignored", type=type(m).__name__, round=m.round_id,
                             instance=m.instance_id)
            return
        self._answered[1].add(type(m).__name__)
        try:
            out = cur.sum.handle(m)
        except SecureSumError as e:
            self.events.emit("sum_failed", round=cur.round, phase=cur.phase, reason=str(e))
            cur.sum = None
            return
        self._note_completed(cur)
        self._send_sum(out)

    @staticmethod
    def _note_completed(cur: _Round) -> None:
        """Once the open sum knows (and verified) whom it holds, that set is the phase's: phase 0's
        is the round's one set, which every later phase must name exactly."""
        survivors = cur.sum.survivors if cur.sum is not None else None
        if survivors is not None and cur.phase not in cur.completed:
            cur.completed[cur.phase] = tuple(sorted(survivors))

    def _send_sum(self, out: list[CryptoMessage]) -> None:
        cur = self.cur
        assert cur is not None
        if any(isinstance(msg, INPUT_TYPES) for msg in out):
            if self.on_release is not None:
                self.on_release({**cur.released, "kind": [type(x).__name__ for x in out if isinstance(x, INPUT_TYPES)],
                                 "bytes": sum(input_nbytes(x) for x in out)})
            if not cur.exposed:
                self.store.mark_exposed(cur.round, cur.digest)  # persisted before the input leaves
                cur.exposed = True
            self.store.record_input_sent(cur.round, cur.phase, cur.instance, cur.update_digest)
        for msg in out:
            self._send(msg, cur.round, instance=cur.instance, phase=cur.phase)

    def _on_round_end(self, m: RoundEnd) -> None:
        cur = self.cur
        if cur is None or cur.round != m.round:
            return
        if m.committed and self.name in m.survivors and cur.pending_state is not None and m.round > self.committed:
            self._commit(m.round, cur.pending_state)
        self.events.emit("round_end", round=m.round, committed=m.committed, included=self.name in m.survivors)


# ---------------------------------------------------------------------- from silo.toml
