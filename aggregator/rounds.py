"""The aggregator's round state machine (docs/design.md §3) over any :class:`ServerTransport`.

One round: wait for at least ``min_silos`` live silos; send :class:`RoundStart`; collect
:class:`UpdateReady` until the training deadline; then for each of the strategy's phases run
one secure-sum instance (fresh keys, its own instance id) among the silos still standing,
with a deadline per protocol step (silent silos become dropouts); hand the strategy only the
:class:`Sums`; after the last phase commit: checkpoint, ledger, :class:`RoundEnd`. A round
that falls below ``min_silos`` anywhere is abandoned and retried; nothing of it is kept.

Messages for a closed phase or an old round are ignored and logged. The same code runs over
the in-memory transport in tests and ZeroMQ in production; time comes from ``clock``.

At the end (or an abort) :class:`RunEnd` goes to every silo and the ledgers are closed: each
silo's final head is witnessed and receipted, after this ledger's run_end (``_close_ledgers``).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from fedalign.projector import layout_mismatch
from fedalign.protocol.errors import FedAlignError, ProtocolError, RoundAborted
from fedalign.compliance.eventlog import EventLog
from fedalign.compliance.entries import LedgerHead
from fedalign.compliance.ledger import Ledger
from fedalign.compliance.witness import sign_receipt, verify_head
from fedalign.protocol.messages import (LedgerClose, LedgerReceipt, Heartbeat, JoinReply, LeaveNotice, ModelDeclaration, RoundEnd, RoundStart, RunEnd,
                                        SumScheme, SumStart, UpdateReady)
from fedalign.fedcmp.phases import PhaseSum, phase_allows_dropouts, run_phases, sums_from_arrays
from fedalign.fedcmp.strategy import Strategy, Tensors
from fedalign.protocol.transport import AGGREGATOR, ServerTransport
from fedalign.protocol.view import phase_view, round_view
from fedalign.protocol.wire import Envelope
from fedalign.aggregator.checkpoint import ROUND_COMMITTED_FIELDS, CheckpointStore, RunState

from fedalign.crypto.config import SecureSumConfig
from fedalign.crypto.errors import CryptoError, SecAggAborted, SecureSumUsageError
from fedalign.crypto.identity import Roster
from fedalign.crypto.messages import Message as CryptoMessage, input_nbytes
from fedalign.crypto.schemes import scheme_spec
from fedalign.crypto.secure_sum import AggregatorSecureSum

__all__ = ["RoundPolicy", "Coordinator", "round_seed", "sum_threshold", "to_numpy", "to_torch"]


@dataclass(frozen=True)
class RoundPolicy:
    """How rounds run; mirrors ``[run]`` and ``[secure_sum]`` of aggregator.toml."""

    rounds: int
    min_silos: int = 3
    train_deadline_s: float = 600.0
    step_deadline_s: float = 60.0
    heartbeat_timeout_s: float = 30.0
    roster_wait_s: float = 600.0
    roster_grace_s: float = 2.0
    report_interval_s: float = 10.0  # while waiting for silos: who is connected, who is missing
    max_failed_rounds: int = 3
    seed: int = 0
    scheme: str = SumScheme.SECAGG  # a name in crypto's scheme table (fedalign.crypto.schemes)
    clip: float = 16.0
    neighbours: int | None = None
    ckks_poly_modulus: int = 8192
    allow_insecure_plaintext: bool = False
    close_wait_s: float = 10.0  # after RunEnd: how long to wait for the silos' final ledger heads


# One silo can leave and reconnect as fast as it can send (LeaveNotice + Heartbeat pairs: ~2.5 MB/s
# of event lines before this bound), or send junk that is dropped line by line. Per silo, at most
# CHURN_EVENTS_MAX lines a silo's messages cause (connected, left, message dropped, sum message
# rejected, ledger head refused) per CHURN_WINDOW_S of the coordinator's clock; the rest are
# counted, and one "events_suppressed" line with the counts is written when the window ends (or the
# run does). Drops whose sender is unknown share one such budget (silo null in the line).
CHURN_EVENTS_MAX = 20
CHURN_WINDOW_S = 60.0


def round_seed(seed: int, round_id: int) -> bytes:
    """The public seed of a round (32 bytes): a hash of the run seed and the round."""
    return hashlib.sha256(b"fedalign/round-seed/" + str(seed).encode() + b"/" + str(round_id).encode()).digest()


def sum_threshold(n: int, min_silos: int, neighbours: int | None) -> int:
    """Survivors every step needs: a strict majority of each group, and never under ``min_silos``."""
    group = n if neighbours is None else min(n, neighbours + 1)
    return min(n, max(group // 2 + 1, min_silos))


def to_numpy(t: Tensors) -> dict[str, np.ndarray]:
    return {k: v.detach().to("cpu").contiguous().numpy() for k, v in t.items()}


def to_torch(a: Mapping[str, np.ndarray], dtype: torch.dtype | None = None) -> Tensors:
    out = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in a.items()}
    return {k: v.to(dtype) for k, v in out.items()} if dtype is not None else out


class _Abandon(Exception):
    """This round cannot complete; it is dropped and retried."""


@dataclass
class _RoundRecord:
    round: int
    survivors: tuple[str, ...] = ()
    ready: tuple[str, ...] = ()
    dropped: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    payload_bytes: dict[str, int] = field(default_factory=dict)
    wire_up: dict[str, int] = field(default_factory=dict)
    wire_down: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    sum_seconds: float = 0.0
    epsilon: dict[str, float] = field(default_factory=dict)


class Coordinator:
    """Runs the federation from a :class:`RunState` to ``policy.rounds`` committed rounds."""

    def __init__(
        self,
        transport: ServerTransport,
        strategy: Strategy,
        *,
        strategy_name: str,
        strategy_options: Mapping[str, Any],
        identities: Mapping[str, str],
        policy: RoundPolicy,
        state: RunState,
        store: CheckpointStore | None = None,
        events: EventLog | None = None,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_round: Callable[[RunState, dict[str, Any]], None] | None = None,
        params_source: str = "the aggregator's initial projector",
    ) -> None:
        if scheme_spec(str(policy.scheme)).insecure and not policy.allow_insecure_plaintext:
            from fedalign.protocol.errors import InsecureModeRefused

            raise InsecureModeRefused("plain sums need allow_insecure_plaintext (site policy and flag)")
        self.t = transport
        self.strategy = strategy
        self.strategy_name = strategy_name
        self.strategy_options = dict(strategy_options)
        self.identities = dict(identities)
        self.policy = policy
        self.state = state
        self.store = store
        self.events = events or EventLog(None, source=AGGREGATOR)
        self.ledger = ledger
        self.clock = clock
        self.on_round = on_round
        self.last_seen: dict[str, float] = {}
        self.committed_by: dict[str, int] = {}
        self.left: set[str] = set()
        self.refused: dict[str, str] = {}  # silo -> why its model does not fit θ (it never joins a round)
        self.declared_models: dict[str, tuple[str, str]] = {}  # silo -> (vision tower, LM) it declared (model card)
        self.params_source = params_source  # where θ came from, for the refusal line
        self._instance = secrets.randbelow(1 << 30)  # fresh per process: instance ids never repeat
        self._dtype = next(iter(state.params.values())).dtype if state.params else torch.float32
        # silo ("" : sender unknown) -> [window start, lines written, {event: lines suppressed}]
        self._churn: dict[str, list[Any]] = {}

    # ------------------------------------------------------------------ bounded connect/leave lines
    def _churn_event(self, silo: str | None, event: str, **fields: Any) -> None:
        """Emit a line a silo's message caused unless ``silo`` (None: sender unknown) already had
        CHURN_EVENTS_MAX of them in its current window; then only count it."""
        key = silo or ""
        now = self.clock()
        st = self._churn.get(key)
        if st is None or now - st[0] >= CHURN_WINDOW_S:
            if st is not None:
                self._flush_churn_one(key, st)
            st = self._churn[key] = [now, 0, {}]
        if st[1] < CHURN_EVENTS_MAX:
            st[1] += 1
            if silo is None:
                self.events.emit(event, **fields)
            else:
                self.events.emit(event, silo=silo, **fields)
        else:
            st[2][event] = st[2].get(event, 0) + 1

    def _flush_churn_one(self, key: str, st: list[Any]) -> None:
        if st[2]:
            self.events.emit("events_suppressed", silo=key or None, count=sum(st[2].values()),
                             events=dict(sorted(st[2].items())), window_s=CHURN_WINDOW_S, limit=CHURN_EVENTS_MAX)
            st[2] = {}

    def _flush_churn(self, *, final: bool = False) -> None:
        """Write the count of every window that has ended (``final``: of every window)."""
        now = self.clock()
        for silo, st in list(self._churn.items()):
            if final or now - st[0] >= CHURN_WINDOW_S:
                self._flush_churn_one(silo, st)
                del self._churn[silo]

    # ------------------------------------------------------------------ receiving
    def _next(self, deadline: float) -> Envelope | None:
        """The next envelope that needs the caller, or None at ``deadline``; heartbeats handled here."""
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            try:
                env = self.t.recv(min(remaining, 0.25))
            except ProtocolError as e:
                self._churn_event(None, "message_dropped", reason=str(e))
                continue
            except (ValueError, TypeError, KeyError, OverflowError, RecursionError, MemoryError) as e:
                # the decoder should raise WireFormatError only; whatever it missed must not stop a run
                self._churn_event(None, "message_dropped", reason=f"undecodable ({type(e).__name__}): {e}")
                continue
            if self._churn:
                self._flush_churn()
            if env is None:
                continue
            if env.sender not in self.identities:
                self._churn_event(None, "message_dropped", reason=f"sender {env.sender!r:.80} is not on the roster")
                continue
            m = env.message
            if isinstance(m, ModelDeclaration):
                self._on_declaration(env.sender, m)
            if not isinstance(m, LeaveNotice) and env.sender not in self.refused and env.sender not in self._live():
                self._connected(env.sender)
            self.last_seen[env.sender] = self.clock()
            if isinstance(m, ModelDeclaration):
                continue
            if isinstance(m, Heartbeat):
                self.committed_by[env.sender] = m.last_committed
                continue
            if isinstance(m, LeaveNotice):
                self.left.add(env.sender)
                self._churn_event(env.sender, "silo_left", reason=m.reason)
                continue
            return env

    def _connected(self, silo: str) -> None:
        """A silo is heard from for the first time (or again after going silent): log it, answer it."""
        self.left.discard(silo)
        live = sorted({*self._live(), silo})
        self._churn_event(silo, "silo_connected", connected=live, missing=sorted(set(self.identities) - set(live)))
        if silo not in self.refused:
            self._send(silo, max(self.state.round, 0), self._join_reply(live))

    def _join_reply(self, live: list[str], deadline_s: float = -1.0) -> JoinReply:
        missing = tuple(sorted(set(self.identities) - set(live) - set(self.refused)))
        return JoinReply(True, "", tuple(live), missing, float(deadline_s))

    def _on_declaration(self, silo: str, m: ModelDeclaration) -> None:
        """The model-shape handshake: refuse, before any round, a silo whose projector does not fit θ."""
        diff = layout_mismatch({k: v.shape for k, v in self.state.params.items()}, m.shapes)
        if diff is None:
            self.declared_models[silo] = (str(m.vision_tower), str(m.llm))
            if self.refused.pop(silo, None) is not None:
                self.events.emit("silo_accepted", silo=silo)
            return
        first, ours, theirs = diff
        reason = (f"silo {silo}'s projector does not fit: {first} is {theirs} at the silo ({m.projector} for "
                  f"vision {m.vision_tower!r} d={m.d_vision}, LM {m.llm!r} d={m.d_model}) but {ours} at the "
                  f"aggregator ({self.params_source}); make θ_0 from the silos' models with `silo describe` and "
                  "`aggregator init` (README, Running a real federation), or fix the silo's [model]")
        if self.refused.get(silo) != reason:
            self.refused[silo] = reason
            self.events.emit("silo_refused", silo=silo, reason=reason)
        self._send(silo, max(self.state.round, 0), JoinReply(False, reason, (), (), -1.0))

    def _tell_abort(self, reason: str) -> None:
        """The run is given up: every silo still connected hears why (RunEnd, reason 'aborted: ...')."""
        end = RunEnd(self.state.round, to_numpy(self.state.params), f"aborted: {reason}")
        told = self._live()
        for s in told:
            self._send(s, self.state.round, end)
        self.events.emit("run_aborted", rounds=self.state.round, reason=reason, told=told)
        self._close_ledgers(set(told), end)

    def _late(self, env: Envelope, where: str) -> None:
        self.events.emit(
            "late_message_ignored",
            silo=env.sender,
            type=type(env.message).__name__,
            round=env.round,
            instance=env.instance,
            phase=env.phase,
            now=where,
        )

    def _live(self) -> list[str]:
        now = self.clock()
        return sorted(
            s
            for s, seen in self.last_seen.items()
            if now - seen <= self.policy.heartbeat_timeout_s and s not in self.left and s not in self.refused
        )

    def _send(self, to: str, round_id: int, msg: Any, *, instance: int = -1, phase: int = -1) -> int:
        return self.t.send(to, Envelope(round_id, instance, phase, AGGREGATOR, msg))

    # ------------------------------------------------------------------ the run
    def run(self) -> RunState:
        """Run rounds until ``policy.rounds`` are committed; then tell the silos the run is over."""
        try:
            return self._run()
        finally:
            self._flush_churn(final=True)  # the counts of windows still open when the run ends

    def _run(self) -> RunState:
        failed = 0
        self.events.emit("run_started", round=self.state.round, rounds=self.policy.rounds,
                         strategy=self.strategy.name, scheme=str(self.policy.scheme))
        while self.state.round < self.policy.rounds:
            try:
                self.state = self._round(self.state)
                failed = 0
            except _Abandon as e:
                failed += 1
                self.events.emit("round_abandoned", round=self.state.round, reason=str(e), consecutive=failed)
                if failed >= self.policy.max_failed_rounds:
                    msg = f"round {self.state.round}: {failed} consecutive attempts failed; last: {e}"
                    self._tell_abort(msg)
                    raise RoundAborted(msg) from None
            except RoundAborted as e:
                self._tell_abort(str(e))
                raise
        self._finish()
        return self.state

    def _finish(self) -> None:
        """Send RunEnd to every silo heard from; after a resume of a finished run, wait for them briefly."""
        end = RunEnd(self.state.round, to_numpy(self.state.params), "completed")
        told: set[str] = set()
        early: list[Envelope] = []
        deadline = self.clock() + min(self.policy.roster_wait_s, self.policy.heartbeat_timeout_s)
        while True:
            for s in sorted(set(self.last_seen) - self.left - told):
                self._send(s, self.state.round, end)
                told.add(s)
            if told >= set(self.identities) - self.left - set(self.refused) or self.clock() >= deadline:
                break
            env = self._next(min(deadline, self.clock() + 0.25))
            if env is not None and isinstance(env.message, LedgerClose):
                early.append(env)  # a silo told first closes while others are still being told
            elif env is not None:
                self._late(env, "run finished")
        acked = self._close_ledgers(told, end, early)
        # a silo still heard from after it was told, that has not answered the RunEnd (LedgerClose),
        # missed it (a reconnect, a restart): tell it again for a short while, so no silo waits out
        # its timeout for a finished run; the wait ends once every silo told has answered or left
        told_at = {s: self.clock() for s in told}
        grace = self.clock() + min(3.0, self.policy.heartbeat_timeout_s)
        while self.clock() < grace and not told <= acked | self.left:
            env = self._next(min(grace, self.clock() + 0.25))
            if env is not None and isinstance(env.message, LedgerClose) and env.sender in told:
                acked.add(env.sender)  # its answer to the RunEnd (no aggregator ledger to close)
            elif env is not None:
                self._late(env, "run finished")
            for s in sorted(told - acked):
                if self.last_seen.get(s, -1e18) > told_at[s] + 0.5:
                    self._send(s, self.state.round, end)
                    told_at[s] = self.clock()
                    self.events.emit("run_end_resent", silo=s)
        self._flush_churn(final=True)
        self.events.emit("run_finished", rounds=self.state.round, told=sorted(told))

    def _await_roster(self, round_id: int) -> list[str]:
        """Live silos once all are live, or once ``min_silos`` are and a grace period passed."""
        p = self.policy
        start = self.clock()
        deadline = start + p.roster_wait_s
        enough_since: float | None = None
        next_report = start + p.report_interval_s
        while True:
            live = self._live()
            everyone = set(self.identities) - self.left - set(self.refused)
            if len(live) >= p.min_silos:
                enough_since = enough_since if enough_since is not None else self.clock()
                if set(live) >= everyone or self.clock() - enough_since >= p.roster_grace_s:
                    return live
            else:
                enough_since = None
            missing = sorted(set(self.identities) - set(live) - set(self.refused))
            if self.refused and len(set(self.identities) - set(self.refused)) < p.min_silos:
                raise RoundAborted(f"round {round_id}: refused {len(self.refused)} silo(s), fewer than "
                                   f"run.min_silos = {p.min_silos} can join: " + "; ".join(self.refused.values()))
            if self.clock() >= deadline:
                raise RoundAborted(
                    f"round {round_id}: only {len(live)} silo(s) live ({', '.join(live) or 'none'}) "
                    f"after {p.roster_wait_s:g}s; run.min_silos is {p.min_silos}; missing: "
                    f"{', '.join(missing) or 'none'}"
                    + (f"; refused: {', '.join(sorted(self.refused))}" if self.refused else "")
                    + " (check that each missing silo runs `silo train` with this aggregator's address and key)"
                )
            if self.clock() >= next_report:
                left_s = max(0.0, deadline - self.clock())
                self.events.emit("waiting_for_silos", round=round_id, connected=live, missing=missing,
                                 refused=sorted(self.refused), need=p.min_silos, seconds_left=round(left_s))
                for s in live:
                    self._send(s, round_id, self._join_reply(live, left_s))
                next_report = self.clock() + p.report_interval_s
            env = self._next(min(deadline, self.clock() + 0.25))
            if env is not None:
                self._late(env, "waiting for silos")

    def _round(self, state: RunState) -> RunState:
        t0 = self.clock()
        t = state.round
        p, strat = self.policy, self.strategy
        roster = self._await_roster(t)
        seed = round_seed(p.seed, t)
        rec = _RoundRecord(round=t)
        before = self.t.traffic.snapshot()
        prev_survivors = tuple(state.history[-1]["survivors"]) if state.history else ()
        public = strat.round_public(state.public, final=t == p.rounds - 1)  # Fed-CMP: flush in the last round
        start = RoundStart(
            t, to_numpy(state.params), to_numpy(public), tuple(roster), seed, self.strategy_name,
            self.strategy_options, strat.n_phases, p.train_deadline_s, prev_survivors,
            self.ledger.head().to_wire() if self.ledger is not None else {},
        )
        for s in roster:
            self._send(s, t, start)
        self.events.emit("round_started", round=t, roster=roster)

        # local training
        ready: dict[str, float] = {}
        deadline = self.clock() + p.train_deadline_s
        silent: list[str] = []
        while True:
            # silos heartbeat while they train: one silent past heartbeat_timeout_s is a dropout now
            now = self.clock()
            silent = sorted(s for s in roster if s not in ready
                            and now - self.last_seen.get(s, -1e18) > p.heartbeat_timeout_s)
            if set(ready) | set(silent) | self.left >= set(roster):
                break
            env = self._next(min(deadline, now + 0.25))
            if env is None:
                if self.clock() >= deadline:
                    break
                continue
            m = env.message
            if isinstance(m, UpdateReady) and m.round == t and env.sender in roster:
                eps = m.epsilon
                if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
                    # a malformed report must not reach the ledger (it once broke the commit after
                    # the checkpoint); the silo is treated as not ready
                    self._churn_event(env.sender, "message_dropped", type="UpdateReady",
                                     reason=f"epsilon must be a finite number >= 0, got {eps!r:.80}")
                    continue
                ready[env.sender] = float(eps)
                self._witness(env.sender, m.ledger_head)
            else:
                self._late(env, f"round {t} training")
        rec.ready = tuple(sorted(ready))
        rec.epsilon = ready
        missing = sorted(set(roster) - set(ready))
        if missing:
            rec.dropped += missing
            self.events.emit("dropouts", round=t, stage="train", silos=missing,
                             silent=[s for s in missing if s in silent],
                             left=[s for s in missing if s in self.left])
        if len(ready) < p.min_silos:
            raise _Abandon(f"{len(ready)} silo(s) finished training, run.min_silos is {p.min_silos}")

        # the phases, each one secure sum, through the one phase loop the simulator also runs; one
        # participant set per round: every later phase sums exactly the set phase 0 summed (the silos
        # refuse anything else), so a set that shrinks after phase 0 abandons the round
        participants = sorted(ready)
        view = round_view(start)

        def sum_phase(phase: int, public: Tensors, phase_public: Tensors) -> PhaseSum:
            nonlocal participants
            sums, included = self._secure_sum(t, phase, participants, phase_public, seed, rec, view)
            gone = sorted(set(participants) - set(included))
            if gone:
                rec.dropped += gone
                self.events.emit("dropouts", round=t, stage=f"sum phase {phase}", silos=gone)
                if phase > 0:
                    raise _Abandon(f"phase {phase} lost {', '.join(gone)} after phase 0; a round sums one set "
                                   "of silos, so it is abandoned (the retry trains fresh shards)")
            if len(included) < p.min_silos:
                raise _Abandon(f"phase {phase} summed {len(included)} silo(s), run.min_silos is {p.min_silos}")
            participants = list(included)
            return PhaseSum(sums_from_arrays(sums, len(included), dtype=self._dtype), tuple(included))

        ts = self.clock()
        outcome = run_phases(strat, state.params, public, state.server_state, sum_phase)
        rec.metrics.update(outcome.metrics)
        rec.sum_seconds = self.clock() - ts
        rec.survivors = tuple(participants)

        after = self.t.traffic.snapshot()
        for s in roster:
            rec.wire_up[s] = after["received"].get(s, 0) - before["received"].get(s, 0)
            rec.wire_down[s] = after["sent"].get(s, 0) - before["sent"].get(s, 0)
        rec.seconds = self.clock() - t0
        record = {
            "round": t,
            "survivors": list(rec.survivors),
            "dropped": sorted(set(rec.dropped)),
            "metrics": rec.metrics,
            "payload_bytes": rec.payload_bytes,
            "wire_up_bytes": rec.wire_up,
            "wire_down_bytes": rec.wire_down,
            "epsilon": rec.epsilon,
            "seconds": round(rec.seconds, 3),
            "sum_seconds": round(rec.sum_seconds, 3),
        }
        new = RunState(
            round=t + 1,
            params=outcome.params,
            public=outcome.public,
            server_state=outcome.server_state,
            meta=state.meta,
            history=[*state.history, record],
        )
        self._commit(new, record)
        return new

    def _witness(self, silo: str, head: Mapping[str, Any]) -> None:
        """Record ``silo``'s ledger head (sent with UpdateReady) in this ledger: deleting the newest
        entries of that silo's ledger later (its DP charges) is then detectable by comparing the two.
        A head not signed by the silo's identity is logged and not recorded."""
        if self.ledger is None or not head:
            return
        try:
            h = LedgerHead.from_wire(head)
            verify_head(h, bytes.fromhex(self.identities[silo]))
        except (FedAlignError, ValueError) as e:
            self._churn_event(silo, "ledger_head_refused", reason=str(e))
            return
        self.ledger.record_witness(silo, h, now=time.time())

    def _close_ledgers(self, told: set[str], end: RunEnd, early: Sequence[Envelope] = ()) -> set[str]:
        """Close both sides' ledgers so that no entry is left unwitnessed: each silo told ``end``
        answers with its final head (LedgerClose, its run_end written); each head signed by that
        silo is recorded here as a final witness; then this ledger's run_end; then every silo that
        closed gets a receipt (this identity's signature over its head) and this ledger's head after
        run_end, which it records (compliance.witness, "No unwitnessed tail"). A silo that does not
        answer within ``close_wait_s`` is named in run_end as unclosed. Returns the silos that
        answered (without a ledger here: those whose LedgerClose came while the RunEnd went out)."""
        if self.ledger is None:
            return {e.sender for e in early if isinstance(e.message, LedgerClose)}
        closed: dict[str, LedgerHead | None] = {}
        deadline = self.clock() + self.policy.close_wait_s
        queue = list(early)
        while set(told) - set(closed) - self.left and (queue or self.clock() < deadline):
            env = queue.pop(0) if queue else self._next(min(deadline, self.clock() + 0.25))
            if env is None:
                continue
            m = env.message
            if not isinstance(m, LedgerClose) or env.sender not in told or env.sender in closed:
                self._late(env, "closing the ledgers")
                continue
            closed[env.sender] = None
            if not m.head:  # this silo keeps no ledger
                continue
            try:
                head = LedgerHead.from_wire(m.head)
                verify_head(head, bytes.fromhex(self.identities[env.sender]))
            except (FedAlignError, ValueError) as e:
                self.events.emit("ledger_head_refused", silo=env.sender, reason=str(e), stage="close")
                continue
            self.ledger.record_witness(env.sender, head, now=time.time(), final=True)
            closed[env.sender] = head
        receipted = sorted(s for s, h in closed.items() if h is not None)
        unclosed = sorted(set(told) - set(closed))
        self.ledger.append("run_end", {"reason": end.reason, "rounds_done": end.rounds_done,
                                       "closed": receipted, "unclosed": unclosed}, now=time.time())
        own = self.ledger.head()
        identity = self.ledger.identity
        for s in receipted:
            head = closed[s]
            assert head is not None
            receipt = sign_receipt(identity, s, head) if identity is not None else b""
            self._send(s, end.rounds_done, LedgerReceipt(head.to_wire(), receipt, own.to_wire()))
        self.events.emit("ledgers_closed", receipted=receipted, unclosed=unclosed,
                         without_ledger=sorted(s for s, h in closed.items() if h is None))
        return set(closed)

    def _commit(self, new: RunState, record: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.save(new)
        if self.ledger is not None:
            self.ledger.append("round_committed", {k: record[k] for k in ROUND_COMMITTED_FIELDS}, now=time.time())
        end = RoundEnd(record["round"], True, "committed", tuple(record["survivors"]))
        for s in self._live():
            self._send(s, record["round"], end)
        self.events.emit("round_committed", **record)
        if self.on_round is not None:
            self.on_round(new, record)

    # ------------------------------------------------------------------ one secure sum
    def _secure_sum(
        self, t: int, phase: int, participants: list[str], phase_public: Tensors, seed: bytes, rec: _RoundRecord,
        view: bytes = b"",
    ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        """One phase's secure sum over ``participants``; ``view`` is the round's digest (protocol.view),
        which every survivor signs with this phase's SumStart."""
        p = self.policy
        self._instance += 1
        inst = self._instance
        threshold = sum_threshold(len(participants), p.min_silos, p.neighbours)
        msg = SumStart(t, phase, inst, p.scheme, tuple(participants), threshold, p.clip, p.neighbours or 0,
                       p.ckks_poly_modulus, to_numpy(phase_public))
        cfg = SecureSumConfig(
            mode=str(p.scheme),
            threshold=threshold,
            clip=p.clip,
            allow_insecure_plaintext=scheme_spec(str(p.scheme)).insecure,
            neighbours=p.neighbours,
            graph_seed=seed,
            ckks_poly_modulus=p.ckks_poly_modulus,
            view=phase_view(view, msg, tuple(sorted(participants))),
            allow_dropouts=phase_allows_dropouts(self.strategy.n_phases, phase,
                                                 scheme_spec(str(p.scheme)).signed_survivors),
        )
        try:
            agg = AggregatorSecureSum(Roster({s: self.identities[s] for s in participants}), t, inst, cfg)
        except SecureSumUsageError as e:
            raise _Abandon(f"phase {phase}: cannot open a secure sum over {participants}: {e}") from e
        for s in participants:
            self._send(s, t, msg, instance=inst, phase=phase)
        self.events.emit("sum_started", round=t, phase=phase, instance=inst, participants=participants,
                         threshold=threshold)

        def forward(out: list[tuple[str, CryptoMessage]]) -> None:
            for dest, m in out:
                self._send(dest, t, m, instance=inst, phase=phase)

        stage = agg.stage
        deadline = self.clock() + p.step_deadline_s
        try:
            while not agg.done:
                env = self._next(deadline)
                if env is None:
                    self.events.emit("step_deadline", round=t, phase=phase, instance=inst, stage=str(agg.stage),
                                     silent=sorted(agg.waiting_for))
                    forward(agg.close_step())
                    stage, deadline = agg.stage, self.clock() + p.step_deadline_s
                    continue
                elif isinstance(env.message, CryptoMessage) and env.message.round_id == t \
                        and env.message.instance_id == inst and env.sender in participants:
                    m = env.message
                    try:
                        out = agg.handle(env.sender, m)
                    except (CryptoError, SecureSumUsageError, ValueError, TypeError, KeyError) as e:
                        self._churn_event(env.sender, "sum_message_rejected", round=t, phase=phase,
                                         stage=str(agg.stage), reason=str(e))
                        continue
                    n = input_nbytes(m)
                    if n:
                        rec.payload_bytes[env.sender] = rec.payload_bytes.get(env.sender, 0) + n
                    forward(out)
                else:
                    self._late(env, f"round {t} phase {phase} instance {inst}")
                    continue
                if agg.stage != stage:
                    stage = agg.stage
                    deadline = self.clock() + p.step_deadline_s
        except SecAggAborted as e:
            raise _Abandon(f"phase {phase}: secure sum aborted: {e}") from None
        res = agg.result
        return res.sums, tuple(res.included)
