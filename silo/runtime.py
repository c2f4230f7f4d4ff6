"""The silo's side of a federated run over any :class:`ClientTransport`.

It answers the aggregator's :class:`RoundStart` by training one fresh shard (the trainer
charges the DP accountant before the update exists outside it), then takes part in each
phase's secure sum with its contribution computed by the strategy. Before joining a sum it
checks the participants against its own trusted roster and policy (``min_silos``, the
threshold, no plain sums unless allowed): a sum over too few silos would reveal its update.

Heartbeats go out while idle and while training. The carried silo state (Fed-CMP's
error-feedback residual) is committed only when the aggregator reports the round committed
with this silo among the survivors, and persisted atomically; a round restarted by a
resumed aggregator with the same θ_t reuses the update already trained (no second charge).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from safetensors.torch import save_file

from common.atomic import atomic_write
from common.errors import CheckpointError, DataError, InsecureModeRefused, PrivacyBudgetExceeded, ProtocolError
from common.eventlog import EventLog
from common.messages import Heartbeat, LeaveNotice, RoundEnd, RoundStart, RunEnd, Stage, SumScheme, SumStart, UpdateReady
from common.strategies import FedCMP, make_strategy
from common.strategy import Strategy, Tensors
from common.transport import ClientTransport
from common.wire import Envelope

from crypto.config import SecureSumConfig
from crypto.errors import SecureSumError
from crypto.identity import IdentityKey, Roster
from crypto.messages import CkksInput, MaskedInput, Message as CryptoMessage, PlainInput
from crypto.secure_sum import SiloSecureSum

_INPUT_TYPES = (MaskedInput, CkksInput, PlainInput)  # the messages that carry a silo's input

__all__ = ["TrainedUpdate", "RoundTrainer", "SiloPolicy", "SiloOutcome", "SiloParticipant", "params_digest"]


@dataclass(frozen=True)
class TrainedUpdate:
    """One round of local training: Δ = θ_k − θ_t, records used, ε spent so far (None without DP)."""

    delta: Tensors
    n_samples: int
    epsilon: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


class RoundTrainer(Protocol):
    """What the runtime needs from local training (``silo.trainer`` behind an adapter)."""

    def train(self, round_id: int, params: Tensors) -> TrainedUpdate:
        """Train a fresh shard from ``params``; raise PrivacyBudgetExceeded before anything is spent."""


@dataclass(frozen=True)
class SiloPolicy:
    """The silo's own rules, whatever the aggregator asks."""

    min_silos: int = 3
    heartbeat_interval_s: float = 2.0
    aggregator_timeout_s: float = 600.0
    max_weight: float = 512.0
    allow_insecure_plaintext: bool = False
    dp_enabled: bool = False


@dataclass
class SiloOutcome:
    params: Tensors | None
    rounds_done: int
    committed: list[int]
    reason: str
    first_params: Tensors | None = None  # θ of the first round this silo saw (for before/after metrics)
    first_round: int | None = None


def params_digest(params: Mapping[str, torch.Tensor] | Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(params):
        v = params[k]
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        h.update(k.encode() + b"\0" + str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


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
    exposed: bool = False  # its input went into a sum: never reuse this update in another one
    pending_state: Tensors | None = None
    sum: SiloSecureSum | None = None
    instance: int = -1
    phase: int = -1


class _Store:
    """The silo's federation state on disk: committed round, carried state, the last update."""

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def save_state(self, committed: int, state: Tensors) -> None:
        """The committed round travels inside the state file (one atomic write, so a crash
        never pairs a round with another round's state); federation.json mirrors it for people."""
        if self.dir is None:
            return
        atomic_write(self.dir / "silo_state.safetensors", lambda p: save_file(
            {k: v.contiguous() for k, v in state.items()} or {"__empty__": torch.zeros(0)}, str(p),
            metadata={"committed_round": str(committed)}))
        atomic_write(self.dir / "federation.json", lambda p: p.write_text(json.dumps({"committed_round": committed})))

    def _read(self, name: str, round_key: str, what: str) -> tuple[int, Tensors] | None:
        """A state file's round (from its metadata) and tensors; None if absent."""
        path = self.dir / name if self.dir is not None else None
        if path is None or not path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                r = int((f.metadata() or {})[round_key])
                t = {k: f.get_tensor(k) for k in f.keys() if k != "__empty__"}
        except Exception as e:  # noqa: BLE001 - any damage is one clear error
            raise CheckpointError(f"{self.dir}: cannot read the silo's {what}: {e}") from e
        return r, t

    def load_state(self) -> tuple[int, Tensors | None]:
        got = self._read("silo_state.safetensors", "committed_round", "federation state")
        return got if got is not None else (-1, None)

    def save_update(self, round_id: int, digest: str, upd: TrainedUpdate) -> None:
        if self.dir is None:
            return
        atomic_write(self.dir / "last_update.safetensors", lambda p: save_file(
            {k: v.contiguous() for k, v in upd.delta.items()}, str(p),
            metadata={"round": str(round_id), "digest": digest, "n_samples": str(upd.n_samples),
                      "epsilon": "" if upd.epsilon is None else repr(upd.epsilon)}))

    def save_pending(self, round_id: int, state: Tensors) -> None:
        """The carried state this round will leave if it is committed (written before inputs leave)."""
        if self.dir is None:
            return
        atomic_write(self.dir / "pending_state.safetensors", lambda p: save_file(
            {k: v.contiguous() for k, v in state.items()} or {"__empty__": torch.zeros(0)}, str(p),
            metadata={"round": str(round_id)}))

    def load_pending(self) -> tuple[int, Tensors] | None:
        return self._read("pending_state.safetensors", "round", "pending state")

    def mark_exposed(self, round_id: int, digest: str) -> None:
        """Record (before the input leaves) that this round's update went into a sum."""
        if self.dir is None:
            return
        atomic_write(self.dir / "last_update.exposed.json",
                     lambda p: p.write_text(json.dumps({"round": round_id, "digest": digest})))

    def load_update(self, round_id: int, digest: str) -> TrainedUpdate | None:
        """The saved update of ``round_id`` for θ with ``digest``, unless it already went into a sum."""
        if self.dir is None:
            return None
        p = self.dir / "last_update.safetensors"
        if not p.exists():
            return None
        ex = self.dir / "last_update.exposed.json"
        if ex.exists() and json.loads(ex.read_text()) == {"round": round_id, "digest": digest}:
            return None
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("round") != str(round_id) or meta.get("digest") != digest:
                return None
            delta = {k: f.get_tensor(k) for k in f.keys()}
        eps = meta.get("epsilon") or None
        return TrainedUpdate(delta, int(meta["n_samples"]), float(eps) if eps else None)


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
    ) -> None:
        if name not in trusted:
            raise ProtocolError(f"silo {name!r} is not in its own trusted roster")
        self.name = name
        self.t = transport
        self.trainer = trainer
        self.identity = identity
        self.trusted = dict(trusted)
        self.policy = policy
        self.store = _Store(state_dir)
        self.events = events or EventLog(None, source=name)
        self.clock = clock
        self.on_contribution = on_contribution
        self.stop = stop or threading.Event()
        self.committed, self.silo_state = self.store.load_state()
        # a round this silo took part in before it was killed: committed iff the next RoundStart says so
        self._disk_pending = self.store.load_pending()
        self.committed_rounds: list[int] = []
        self.cur: _Round | None = None
        self._last_beat = -1e18
        self._strategies: dict[str, Strategy] = {}
        self._first: tuple[Tensors | None, int | None] = (None, None)

    # ------------------------------------------------------------------ plumbing
    def _send(self, msg: Any, round_id: int, *, instance: int = -1, phase: int = -1) -> None:
        self.t.send(Envelope(round_id, instance, phase, self.name, msg))

    def _beat(self, stage: Stage, *, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last_beat >= self.policy.heartbeat_interval_s:
            self._send(Heartbeat(stage, self.committed), max(self.committed, 0))
            self._last_beat = now

    def _strategy(self, name: str, options: Mapping[str, Any]) -> Strategy:
        key = json.dumps([name, dict(options)], sort_keys=True, default=str)
        if key not in self._strategies:
            strat = make_strategy(name, **dict(options))
            if self.policy.dp_enabled and isinstance(strat, FedCMP) and strat.config.error_feedback:
                # DESIGN §4: error feedback would re-inject noise the projection removed; it is silo-local.
                strat = FedCMP(replace(strat.config, error_feedback=False))
                self.events.emit("error_feedback_off_under_dp")
            self._strategies[key] = strat
        return self._strategies[key]

    # ------------------------------------------------------------------ the loop
    def run(self) -> SiloOutcome:
        self.events.emit("silo_started", committed_round=self.committed)
        self._beat(Stage.JOIN, force=True)
        last_contact = self.clock()
        while True:
            env = self.t.recv(self.policy.heartbeat_interval_s / 2)
            now = self.clock()
            if env is None:
                if self.stop.is_set():  # checked when idle, so queued messages are handled first
                    break
                if now - last_contact > self.policy.aggregator_timeout_s:
                    raise ProtocolError(
                        f"silo {self.name}: no message from the aggregator for {self.policy.aggregator_timeout_s:g}s"
                    )
                self._beat(Stage.SUM if self.cur is not None else Stage.JOIN)
                continue
            last_contact = now
            m = env.message
            try:
                if isinstance(m, RoundStart):
                    self._on_round_start(m)
                elif isinstance(m, SumStart):
                    self._on_sum_start(env, m)
                elif isinstance(m, CryptoMessage):
                    self._on_crypto(env, m)
                elif isinstance(m, RoundEnd):
                    self._on_round_end(m)
                elif isinstance(m, RunEnd):
                    self.events.emit("run_end", rounds_done=m.rounds_done, reason=m.reason)
                    return SiloOutcome(_to_torch(m.params), m.rounds_done, self.committed_rounds, m.reason,
                                       *self._first)
                else:
                    self.events.emit("message_ignored", type=type(m).__name__, round=env.round)
            except DataError as e:  # one pass over the data is spent: leave cleanly
                self._send(LeaveNotice(f"data spent: {e}"), env.round)
                self.events.emit("left", reason="data spent", detail=str(e))
                return SiloOutcome(None, self.committed + 1, self.committed_rounds, "data spent")
            except PrivacyBudgetExceeded as e:
                self._send(LeaveNotice(f"privacy budget exhausted: {e}"), env.round)
                self.events.emit("left", reason="privacy budget exhausted", detail=str(e))
                raise
            except InsecureModeRefused as e:
                self._send(LeaveNotice(f"refused: {e}"), env.round)
                raise
            self._beat(Stage.SUM if self.cur is not None else Stage.JOIN)
        self._send(LeaveNotice("stopped by the operator"), max(self.committed, 0))
        self.events.emit("left", reason="stopped")
        return SiloOutcome(None, self.committed + 1, self.committed_rounds, "stopped")

    # ------------------------------------------------------------------ handlers
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

    def _on_round_start(self, m: RoundStart) -> None:
        self._commit_previous(m)
        if m.round <= self.committed:
            self.events.emit("late_message_ignored", type="RoundStart", round=m.round, committed=self.committed)
            return
        strat = self._strategy(m.strategy, m.strategy_options)
        if strat.n_phases != m.n_phases:
            raise ProtocolError(f"silo {self.name}: strategy {m.strategy} has {strat.n_phases} phases, "
                                f"the aggregator announced {m.n_phases}")
        params = _to_torch(m.params)
        if self._first[0] is None:
            self._first = (params, m.round)
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
                self.events.emit("training_started", round=m.round)
                upd = self._train(m.round, params)
                self.store.save_update(m.round, digest, upd)
                self.events.emit("training_done", round=m.round, n_samples=upd.n_samples, epsilon=upd.epsilon,
                                 **{k: float(v) for k, v in upd.metrics.items()})
            weight = min(float(upd.n_samples), self.policy.max_weight) / self.policy.max_weight
        self.cur = _Round(m.round, params, _to_torch(m.public), m.seed, strat, upd.delta, weight, digest=digest)
        self._send(UpdateReady(m.round, float(upd.epsilon or 0.0)), m.round)

    def _train(self, round_id: int, params: Tensors) -> TrainedUpdate:
        """Train in a worker thread while the main thread keeps heartbeating."""
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="local-training") as ex:
            fut = ex.submit(self.trainer.train, round_id, params)
            while True:
                try:
                    return fut.result(timeout=self.policy.heartbeat_interval_s)
                except concurrent.futures.TimeoutError:
                    self._beat(Stage.TRAIN, force=True)

    def _check_sum(self, m: SumStart) -> None:
        p = self.policy
        parts = m.participants
        problems = []
        if self.name not in parts:
            problems.append("this silo is not a participant")
        unknown = sorted(set(parts) - set(self.trusted))
        if unknown:
            problems.append(f"participants {unknown} are not in the trusted roster")
        if len(parts) < p.min_silos:
            problems.append(f"{len(parts)} participants, policy min_silos is {p.min_silos}")
        if m.threshold < min(p.min_silos, len(parts)):
            problems.append(f"threshold {m.threshold} is under policy min_silos {p.min_silos}")
        if problems:
            raise ProtocolError(f"silo {self.name}: refused SumStart round {m.round} phase {m.phase}: "
                                + "; ".join(problems))
        if m.scheme == SumScheme.PLAIN_INSECURE and not p.allow_insecure_plaintext:
            raise InsecureModeRefused(
                f"silo {self.name}: the aggregator asked for plain (unprotected) sums; this silo's policy "
                "and command line do not allow insecure plaintext"
            )

    def _on_sum_start(self, env: Envelope, m: SumStart) -> None:
        cur = self.cur
        if cur is None or m.round != cur.round:
            self.events.emit("late_message_ignored", type="SumStart", round=m.round, instance=m.instance)
            return
        try:
            self._check_sum(m)
        except ProtocolError as e:
            self.events.emit("sum_refused", round=m.round, phase=m.phase, reason=str(e))
            return
        public = {**cur.public, **_to_torch(m.public)}
        contrib, new_state = cur.strategy.silo_contribution(m.phase, cur.delta, cur.weight, public, self.silo_state or {})
        cur.pending_state = new_state
        self.store.save_pending(cur.round, new_state)  # before this phase's input leaves
        inputs = {k: v.detach().cpu().numpy().astype(np.float64, copy=False) for k, v in contrib.items()}
        clipped = 0
        for k, a in inputs.items():
            over = np.abs(a) > m.clip
            if over.any():
                clipped += int(over.sum())
                inputs[k] = np.clip(a, -m.clip, m.clip)
        if clipped:
            self.events.emit("contribution_clipped", round=m.round, phase=m.phase, values=clipped, clip=m.clip)
        if self.on_contribution is not None:
            self.on_contribution(m.round, m.phase, inputs)
        cfg = SecureSumConfig(
            mode=str(m.scheme), threshold=m.threshold, clip=m.clip,
            allow_insecure_plaintext=m.scheme == SumScheme.PLAIN_INSECURE and self.policy.allow_insecure_plaintext,
            neighbours=m.neighbours or None, graph_seed=cur.seed, ckks_poly_modulus=m.ckks_poly_modulus,
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
        self._send_sum(out)

    def _on_crypto(self, env: Envelope, m: CryptoMessage) -> None:
        cur = self.cur
        if cur is None or cur.sum is None or m.round_id != cur.round or m.instance_id != cur.instance:
            self.events.emit("late_message_ignored", type=type(m).__name__, round=m.round_id, instance=m.instance_id)
            return
        try:
            out = cur.sum.handle(m)
        except SecureSumError as e:
            self.events.emit("sum_failed", round=cur.round, phase=cur.phase, reason=str(e))
            cur.sum = None
            return
        self._send_sum(out)

    def _send_sum(self, out: list[CryptoMessage]) -> None:
        cur = self.cur
        assert cur is not None
        if not cur.exposed and any(isinstance(msg, _INPUT_TYPES) for msg in out):
            self.store.mark_exposed(cur.round, cur.digest)  # persisted before the input leaves
            cur.exposed = True
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


def _need(cfg: Any, value: Any, field_name: str) -> Any:
    from common.errors import ConfigError

    if value is None:
        raise ConfigError(f"federation.{field_name} must be set for a networked run (see docs/runtime.md)")
    return value


def run_federated(
    config: Any,
    *,
    trainer: RoundTrainer | None = None,
    insecure_plaintext: bool = False,
    stop: threading.Event | None = None,
    on_contribution: Callable[[int, int, dict[str, np.ndarray]], None] | None = None,
    progress: bool = False,
) -> SiloOutcome:
    """Join the federation described by ``config`` (a :class:`common.config.silo.SiloConfig`).

    Builds the ZeroMQ client (CURVE, pinned aggregator key), the trusted roster, the identity
    and, unless ``trainer`` is given, the local trainer from the config; runs until the
    aggregator ends the run. Plaintext transport or plain sums need both
    ``federation.allow_insecure_plaintext`` (policy) and ``insecure_plaintext`` (the flag).
    """
    from common.config.roster import load_roster
    from common.keys import load_keypair, load_public
    from common.messages import wire_registry
    from crypto.errors import SecureSumUsageError
    from crypto.identity import load_identity
    from silo.client import ZmqClient

    fed = config.federation
    name = _need(config, fed.silo_id, "silo_id")
    endpoint = _need(config, fed.aggregator, "aggregator")
    roster = load_roster(config.resolve(_need(config, fed.roster, "roster")))
    if name not in roster.silos:
        from common.errors import ConfigError

        raise ConfigError(f"federation.silo_id {name!r} is not in {config.resolve(fed.roster)}")
    insecure = bool(fed.allow_insecure_plaintext and insecure_plaintext)
    if fed.secret_key is None or fed.aggregator_public_key is None:
        if not insecure:
            raise InsecureModeRefused(
                "federation.secret_key and federation.aggregator_public_key are unset: plaintext transport needs "
                "federation.allow_insecure_plaintext = true and --insecure-plaintext")
        keypair, server_public = None, None
    else:
        keypair = load_keypair(config.resolve(fed.secret_key))
        server_public = load_public(config.resolve(fed.aggregator_public_key))
    try:
        identity = load_identity(config.resolve(_need(config, fed.identity_key, "identity_key")))
    except SecureSumUsageError as e:
        from common.errors import ConfigError

        raise ConfigError(f"federation.identity_key: {e}") from e
    if identity.public_hex != roster.silos[name].identity_public_key:
        from common.errors import ConfigError

        raise ConfigError(f"federation.identity_key does not match {name!r}'s identity in the roster")
    if trainer is None:
        trainer = build_trainer(config)
    state_dir = config.state_dir / "federation"
    events = (_ConsoleEvents if progress else EventLog)(config.out_dir / f"{name}.jsonl", source=name)
    policy = SiloPolicy(
        min_silos=fed.min_silos, heartbeat_interval_s=fed.heartbeat_interval_s,
        aggregator_timeout_s=fed.aggregator_timeout_s,
        max_weight=float(fed.max_weight or config.data.shard_size),
        allow_insecure_plaintext=insecure, dp_enabled=config.privacy.enabled,
    )
    client = ZmqClient(endpoint, name, keypair=keypair, server_public=server_public, registry=wire_registry(),
                       allow_insecure_plaintext=insecure)
    try:
        p = SiloParticipant(name, client, trainer, identity=identity, trusted=roster.identities(), policy=policy,
                            state_dir=state_dir, events=events, on_contribution=on_contribution, stop=stop)
        return p.run()
    finally:
        time.sleep(0.2)  # let a final LeaveNotice leave
        client.close()
        events.close()


class _ConsoleEvents(EventLog):
    """The event log, plus one rich line per milestone and a spinner while a round trains (stderr)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        from rich.console import Console

        self.console = Console(stderr=True)
        self._status: Any = None

    def emit(self, event: str, **f: Any) -> dict[str, Any]:
        rec = super().emit(event, **f)
        if event == "training_started":
            self._status = self.console.status(f"round {f['round']}: training on a fresh shard ...")
            self._status.start()
            return rec
        if self._status is not None and event in ("training_done", "left"):
            self._status.stop()
            self._status = None
        if event == "training_done":
            eps = f" ε {f['epsilon']:.3f}" if f.get("epsilon") is not None else ""
            loss = f" loss {f['train_loss']:.4f}" if "train_loss" in f else ""
            self.console.print(f"round {f['round']}: trained on {f['n_samples']} records{loss}{eps}")
        elif event == "round_end":
            self.console.print(f"round {f['round']}: " + ("committed" if f["committed"] else "abandoned")
                               + ("" if f["included"] else " (without this silo)"))
        elif event in ("sum_refused", "sum_failed", "left", "update_reused", "contribution_clipped", "run_end"):
            self.console.print(f"{event}: " + ", ".join(f"{k}={v}" for k, v in f.items()))
        return rec


class SessionTrainer:
    """:class:`RoundTrainer` over a :class:`silo.session.SiloSession` (fresh shard, DP charged)."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def train(self, round_id: int, params: Tensors) -> TrainedUpdate:
        res = self.session.train_round(params)
        return TrainedUpdate(res.delta, res.n_samples, res.epsilon, dict(res.metrics))


def build_trainer(config: Any) -> RoundTrainer:
    """The local trainer for ``config`` (models, data shards, DP accountant, cursor)."""
    from silo.session import SiloSession

    return SessionTrainer(SiloSession(config))


def federated_train(config: Any, *, insecure_plaintext: bool = False, stop: threading.Event | None = None) -> dict:
    """``silo train`` against an aggregator: run, then evaluate and export the final projector.

    Returns a summary (also written to ``<out>/federated_summary.json``).
    """
    from silo.export import export_projector

    trainer = build_trainer(config)
    out = run_federated(config, trainer=trainer, insecure_plaintext=insecure_plaintext, stop=stop, progress=True)
    summary: dict[str, Any] = {"silo": config.federation.silo_id, "rounds_done": out.rounds_done,
                               "rounds_included": out.committed, "reason": out.reason}
    session = trainer.session  # type: ignore[attr-defined]
    if out.first_params is not None and out.first_round == 0:
        summary["eval_initial"] = session.evaluate(out.first_params)
    if out.params is not None:
        summary["eval"] = session.evaluate(out.params)
        files = export_projector(out.params, config.out_dir / "projector",
                                 metadata={"source": "federated", "rounds": str(out.rounds_done)})
        summary["export"] = {k: str(v) for k, v in files.items()}
    summary["epsilon_spent"] = session.epsilon_spent
    summary["delta"] = config.privacy.delta if config.privacy.enabled else None
    summary["ledger"] = str(config.state_dir / "ledger.jsonl")
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / "federated_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def federation_status(config: Any) -> dict[str, Any]:
    """What ``silo status`` shows: committed round, ε spent, data used, the last events."""
    from common.eventlog import read_events

    committed = -1
    fed_dir = config.state_dir / "federation"
    if (fed_dir / "federation.json").exists():
        committed = int(json.loads((fed_dir / "federation.json").read_text())["committed_round"])
    out: dict[str, Any] = {"silo": config.federation.silo_id, "aggregator": config.federation.aggregator,
                           "last committed round": committed if committed >= 0 else "none"}
    priv = config.state_dir / "privacy.json"
    if priv.exists():
        doc = json.loads(priv.read_text())
        out["privacy charges"] = len(doc.get("charges", []))
    cur = config.state_dir / "cursor.json"
    if cur.exists():
        try:
            doc = json.loads(cur.read_text())
            out["data cursor"] = ", ".join(f"{k}={v}" for k, v in doc.items() if not isinstance(v, (list, dict)))
        except ValueError:
            out["data cursor"] = "unreadable"
    name = config.federation.silo_id or "silo"
    events = read_events(config.out_dir / f"{name}.jsonl")
    if events:
        last = events[-1]
        out["last event"] = f"{last['event']} at {time.strftime('%H:%M:%S', time.localtime(last['time']))}"
    return out
