"""``silo train`` against an aggregator: wire the config to a :class:`SiloParticipant` over ZeroMQ,
run it, then evaluate and export; and what ``silo status`` reports of a federated run.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import numpy as np

from fedalign.fedcmp.pin import StrategyPin
from fedalign.fedcmp.strategy import Tensors
from fedalign.host.atomic import atomic_write_text
from fedalign.protocol.errors import InsecureModeRefused
from fedalign.compliance.eventlog import EventLog
from fedalign.protocol.files import private_mkdir
from fedalign.silo.console import ConsoleEvents
from fedalign.silo.participant import RoundTrainer, SiloOutcome, SiloParticipant, SiloPolicy
from fedalign.silo.store import TrainedUpdate, committed_round

__all__ = ["run_federated", "federated_train", "federation_status", "build_trainer", "SessionTrainer", "strategy_pin"]


def _need(cfg: Any, value: Any, field_name: str) -> Any:
    from fedalign.protocol.errors import ConfigError

    if value is None:
        raise ConfigError(f"federation.{field_name} must be set for a networked run (see docs/runtime.md)")
    return value


def strategy_pin(config: Any) -> StrategyPin:
    """The :class:`~fedalign.fedcmp.pin.StrategyPin` of ``config``'s ``[strategy]``, checked.

    Resolved the way the aggregator resolves its own ``[strategy]`` (``make_strategy(name,
    dp=..., **options)``), with ``dp`` = ``privacy.enabled``; a name or option the strategy does not
    know, a range on an option that is not a number, or reliability under DP that this silo itself
    would refuse is a ConfigError naming ``[strategy]``, raised before any data or model is loaded.
    """
    from fedalign.fedcmp.strategies import PRESETS
    from fedalign.protocol.errors import ConfigError

    sec = config.strategy
    pin = StrategyPin(name=sec.name, options=dict(sec.options),
                      ranges={k: (float(lo), float(hi)) for k, (lo, hi) in sec.ranges.items()},
                      free=tuple(sec.free), dp=bool(config.privacy.enabled),
                      allow_reliability_under_dp=sec.allow_reliability_under_dp)
    if sec.name not in PRESETS:
        raise ConfigError(f"[strategy] name = {sec.name!r} is not a strategy; expected one of {sorted(PRESETS)}")
    try:
        own = pin.expected_options()
    except ConfigError as e:
        raise ConfigError(f"[strategy] options = {dict(sec.options)}: {e}") from None
    known = ", ".join(sorted(own)) or "none"
    for k in sorted(sec.ranges):
        if k not in own:
            raise ConfigError(f"[strategy] ranges: {k!r} is not an option of strategy {sec.name!r} (options: {known})")
        if isinstance(own[k], bool) or not isinstance(own[k], (int, float)):
            raise ConfigError(f"[strategy] ranges: option {k!r} of strategy {sec.name!r} is not a number "
                              f"(this silo's value: {own[k]!r}); pin it in [strategy] options instead")
    defaulted = "free" not in sec.model_fields_set  # the default free = ["seed"] is moot without a seed option
    for k in sec.free:
        if k not in own and not (defaulted and k == "seed"):
            raise ConfigError(f"[strategy] free: {k!r} is not an option of strategy {sec.name!r} "
                              f"(options: {known})")
    rel = own.get("reliability", "off")
    if pin.dp and not pin.allow_reliability_under_dp and rel not in ("off", None):
        raise ConfigError(f"[strategy] options: reliability = {rel!r} under DP (privacy.enabled = true) would make "
                          "this silo refuse its own strategy: set [strategy] allow_reliability_under_dp = true "
                          "(if the site policy allows it) or reliability = \"off\"")
    return pin


def run_federated(
    config: Any,
    *,
    trainer: RoundTrainer | None = None,
    insecure_plaintext: bool = False,
    stop: threading.Event | None = None,
    on_contribution: Callable[[int, int, dict[str, np.ndarray]], None] | None = None,
    progress: bool = False,
    configure: Callable[[SiloParticipant], None] | None = None,
) -> SiloOutcome:
    """Join the federation described by ``config`` (a :class:`fedalign.protocol.config.silo.SiloConfig`).

    Builds the ZeroMQ client (CURVE, pinned aggregator key), the trusted roster, the identity
    and, unless ``trainer`` is given, the local trainer from the config; runs until the
    aggregator ends the run. Plaintext transport or plain sums need both
    ``federation.allow_insecure_plaintext`` (policy) and ``insecure_plaintext`` (the flag).
    """
    from fedalign.protocol.config.roster import load_roster
    from fedalign.protocol.keys import load_keypair, load_public
    from fedalign.protocol.messages import wire_registry
    from fedalign.crypto.errors import SecureSumUsageError
    from fedalign.crypto.identity import load_identity
    from fedalign.silo.client import ZmqClient

    fed = config.federation
    name = _need(config, fed.silo_id, "silo_id")
    endpoint = _need(config, fed.aggregator, "aggregator")
    roster = load_roster(config.resolve(_need(config, fed.roster, "roster")))
    if name not in roster.silos:
        from fedalign.protocol.errors import ConfigError

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
        from fedalign.protocol.errors import ConfigError

        raise ConfigError(f"federation.identity_key: {e}") from e
    if identity.public_hex != roster.silos[name].identity_public_key:
        from fedalign.protocol.errors import ConfigError

        raise ConfigError(f"federation.identity_key does not match {name!r}'s identity in the roster")
    pin = strategy_pin(config)  # before the trainer loads any data: a bad [strategy] fails here
    if trainer is None:
        trainer = build_trainer(config)
    state_dir = config.state_dir / "federation"
    events = (ConsoleEvents(config.out_dir / f"{name}.jsonl", source=name,  # the clip hint under DP
                            max_grad_norm=config.privacy.max_grad_norm if config.privacy.enabled else None)
              if progress else EventLog(config.out_dir / f"{name}.jsonl", source=name))
    policy = SiloPolicy(
        min_silos=fed.min_silos, heartbeat_interval_s=fed.heartbeat_interval_s,
        aggregator_timeout_s=fed.aggregator_timeout_s, wait_report_s=fed.wait_report_s,
        max_weight=float(fed.max_weight or config.data.shard_size),
        allow_insecure_plaintext=insecure, dp_enabled=config.privacy.enabled, scheme=fed.scheme,
        strategy=pin,  # the one strategy and the options this silo accepts (a RoundStart outside it is refused)
        receipt_timeout_s=fed.receipt_timeout_s,
    )
    client = ZmqClient(endpoint, name, keypair=keypair, server_public=server_public, registry=wire_registry(),
                       allow_insecure_plaintext=insecure)
    try:
        p = SiloParticipant(name, client, trainer, identity=identity, trusted=roster.identities(), policy=policy,
                            state_dir=state_dir, events=events, on_contribution=on_contribution, stop=stop,
                            address=endpoint)
        if configure is not None:  # the site policy's checks and the ledger trail (silo.audit)
            configure(p)
        session = getattr(trainer, "session", None)
        if session is not None:
            agg = roster.aggregator
            witness_heads(p, session.ledger, aggregator_key=bytes.fromhex(agg.identity_public_key) if agg else None)
        return p.run()
    finally:
        time.sleep(0.2)  # let a final LeaveNotice leave
        client.close()
        events.close()


def witness_heads(participant: SiloParticipant, ledger: Any, *, aggregator_key: bytes | None = None) -> None:
    """Exchange ledger heads through ``participant``: this silo's (signed) head leaves with each
    UpdateReady and, at the end, with LedgerClose; the aggregator's head that each RoundStart carries
    is recorded in ``ledger``, and so is its closing receipt (``silo audit verify`` compares a peer's
    ledger against them). With ``aggregator_key`` (the roster's ``[aggregator]`` identity) every
    aggregator head and the receipt must carry its signature; one that does not is refused (an event
    and a refusal entry) and not recorded."""
    from fedalign.protocol.errors import CheckpointError
    from fedalign.compliance.entries import LedgerHead
    from fedalign.compliance.witness import receipt_ok, verify_head

    def refuse(what: str, reason: str) -> None:
        participant.events.emit("ledger_head_refused", node="aggregator", what=what, reason=reason)
        ledger.append("refusal", {"request": what, "reason": reason}, now=time.time())

    def peer(node: str, head: dict[str, Any]) -> None:
        try:
            h = LedgerHead.from_wire(head)
            if aggregator_key is not None:
                verify_head(h, aggregator_key)
        except CheckpointError as e:
            refuse("witness the aggregator's ledger head", f"{e} (roster [aggregator] identity)")
            return
        ledger.record_witness(node, h, now=time.time())

    def closed(own_wire: dict[str, Any], r: Any) -> str:
        own = LedgerHead.from_wire(own_wire)
        if r is None:
            why = (f"no receipt from the aggregator within {participant.policy.receipt_timeout_s:g}s for the final "
                   f"head (entry {own.index})")
        else:
            why = ""
            try:
                theirs = LedgerHead.from_wire(r.head)
                agg_head = LedgerHead.from_wire(r.aggregator_head)
                if (theirs.index, theirs.digest) != (own.index, own.digest):
                    why = f"the receipt names entry {theirs.index}, the final head sent was entry {own.index}"
                elif aggregator_key is not None and not receipt_ok(aggregator_key, participant.name, own.index,
                                                                    own.digest, r.receipt):
                    why = "the receipt is not signed by the roster's [aggregator] identity"
                elif aggregator_key is not None:
                    verify_head(agg_head, aggregator_key)
            except CheckpointError as e:
                why = f"the receipt is malformed or unsigned: {e}"
            if not why:
                ledger.record_receipt("aggregator", participant.name, own, r.receipt, agg_head, now=time.time())
                signed = "signed" if r.receipt else "UNSIGNED (the roster names no aggregator identity)"
                return (f"ledger closed: the aggregator witnessed entries up to {own.index} ({signed} receipt recorded "
                        f"as entry {own.index + 1})")
        ledger.append("ledger_not_closed", {"final_head": own.index, "reason": why}, now=time.time())
        return (f"ledger NOT closed: {why}; entries after the last head the aggregator witnessed are unwitnessed "
                "(`silo audit verify` says which; give it the aggregator's ledger)")

    participant.ledger_head = lambda: ledger.head().to_wire()
    participant.on_peer_head = peer
    participant.on_receipt = closed


class SessionTrainer:
    """:class:`RoundTrainer` over a :class:`silo.session.SiloSession` (fresh shard, DP charged)."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def train(self, round_id: int, params: Tensors, *, prox_mu: float = 0.0) -> TrainedUpdate:
        res = self.session.train_round(params, prox_mu=prox_mu)
        return TrainedUpdate(res.delta, res.n_samples, res.epsilon, dict(res.metrics))

    def describe(self):
        """The model declaration this silo sends at join (the shape handshake)."""
        return self.session.declaration()


def build_trainer(config: Any, *, notify: Callable[[str], None] | None = None, policy: Any = None) -> RoundTrainer:
    """The local trainer for ``config`` (models, data shards, DP accountant and plan, cursor); ``policy``
    bounds the DP plan (``privacy.max_epsilon_per_pass``)."""
    from fedalign.silo.session import SiloSession

    return SessionTrainer(SiloSession(config, notify=notify, policy=policy))


def federated_train(config: Any, *, insecure_plaintext: bool = False, stop: threading.Event | None = None,
                    notify: Callable[[str], None] | None = None) -> dict:
    """``silo train`` against an aggregator: run, then evaluate and export the final projector.

    The export goes where ``silo train --local`` puts it (``output.dir``). A silo that stops early
    (data spent, budget reached, the aggregator gave up) still evaluates and exports θ of the
    latest round it was sent. Returns a summary (also written to ``<out>/federated_summary.json``).
    """
    from fedalign.silo.audit import SiloAuditTrail, attach_policy, check_config
    from fedalign.silo.export import export_projector

    policy = check_config(config, networked=True)  # before any data is loaded: names every broken clause
    strategy_pin(config)  # a [strategy] this silo could not run is an error before any data is loaded, too
    trainer = build_trainer(config, notify=notify, policy=policy)
    session = trainer.session  # type: ignore[attr-defined]
    say = notify or (lambda line: None)
    report = session_report(trainer)
    if "kept" in report:
        say(f"data: kept {report['kept']} record(s), skipped {report.get('skipped', 0)}"
            + (f" (data.bad_records = 'skip'; first: {report['problems'][0]})" if report.get("problems") else ""))
    for w in report.get("warnings", []):
        say(f"warning: {w}")
    trail = SiloAuditTrail(session.ledger)  # one Ledger object per file: the accountant's
    trail.run_start(config, policy, networked=True)
    session.record_dp_plan()
    release = policy.release if policy is not None else None
    evaluation = release is None or release.evaluation
    raw = policy.retention.raw_updates if policy is not None else "keep_last"
    ended: list[bool] = []

    def apply_retention() -> None:  # on every exit path: RunEnd, an exception, a stop by the operator
        if raw == "delete_at_run_end":
            (config.state_dir / "federation" / "last_update.safetensors").unlink(missing_ok=True)

    def run_end(m: Any, o: Any) -> None:
        """At RunEnd, before the final head leaves: retention, then run_end with what will be written
        out, so the closing receipt covers it (nothing is appended to the ledger after the receipt)."""
        apply_retention()
        trail.run_end(reason=o.reason, rounds_done=o.rounds_done, committed=o.committed,
                      export_written=o.params is not None and o.rounds_done > 0 and (release is None or release.export),
                      evaluation_written=evaluation, raw_updates=raw)
        ended.append(True)

    def configure(p: Any) -> None:
        attach_policy(p, policy, trail)
        p.on_run_end = run_end

    try:
        out = run_federated(config, trainer=trainer, insecure_plaintext=insecure_plaintext, stop=stop, progress=True,
                            configure=configure)
    except BaseException as e:  # retention holds on every exit path, and run_end says how the run ended
        apply_retention()
        if not ended:
            trail.run_end(reason=f"{type(e).__name__}: {e}", export_written=False, evaluation_written=False,
                          raw_updates=raw)
        raise
    summary: dict[str, Any] = {"silo": config.federation.silo_id, "rounds_done": out.rounds_done,
                               "rounds_included": out.committed, "reason": out.reason,
                               "data": session_report(trainer), "ledger_closed": out.ledger_closed}
    if evaluation and out.first_params is not None and out.first_round == 0:
        summary["eval_initial"] = session.evaluate(out.first_params, label="the initial projector")
    exported = False
    if out.params is not None and out.rounds_done > 0:
        if evaluation:
            summary["eval"] = session.evaluate(out.params, label=f"the projector after {out.rounds_done} round(s)")
        if release is None or release.export:
            files = export_projector(out.params, config.out_dir,
                                     metadata={"source": "federated", "rounds": str(out.rounds_done),
                                               "reason": out.reason})
            summary["export"] = {k: str(v) for k, v in files.items()}
            exported = True
    if not ended:  # no RunEnd (stopped by the operator): retention and run_end now; nothing witnesses it
        apply_retention()
        trail.run_end(reason=out.reason, rounds_done=out.rounds_done, committed=out.committed,
                      export_written=exported, evaluation_written=evaluation, raw_updates=raw)
    if exported:  # the card names the ledger's final head (its closing receipt, after a RunEnd)
        from fedalign.silo.export import write_silo_card

        card = write_silo_card(config, out.params, files, rounds_done=out.rounds_done, rounds_planned=None,
                               included=list(out.committed), scheme=config.federation.scheme,
                               records=session.cursor.n, epsilon=session.epsilon_spent)
        summary["export"]["card"] = str(card)
    summary["epsilon_spent"] = session.epsilon_spent
    summary["delta"] = config.privacy.delta if config.privacy.enabled else None
    summary["ledger"] = str(config.state_dir / "ledger.jsonl")
    private_mkdir(config.out_dir)
    atomic_write_text(config.out_dir / "federated_summary.json", json.dumps(summary, indent=1, default=str))
    return summary


def session_report(trainer: Any) -> dict[str, Any]:
    """The data report (records kept and skipped) of a SessionTrainer's session; {} otherwise."""
    session = getattr(trainer, "session", None)
    return dict(session.inputs.report) if session is not None else {}


def federation_status(config: Any) -> dict[str, Any]:
    """What ``silo status`` shows: committed round, ε spent, data used, the last events."""
    from fedalign.compliance.eventlog import read_events

    from fedalign.silo.data import cursor_status
    from fedalign.silo.privacy import privacy_status

    committed = committed_round(config.state_dir / "federation")
    out: dict[str, Any] = {"silo": config.federation.silo_id, "aggregator": config.federation.aggregator,
                           "last committed round": committed if committed >= 0 else "none"}
    out.update(privacy_status(config.state_dir / "privacy.json"))
    out.update(cursor_status(config.state_dir / "cursor.json"))
    name = config.federation.silo_id or "silo"
    events = read_events(config.out_dir / f"{name}.jsonl")
    if events:
        last = events[-1]
        out["last event"] = f"{last['event']} at {time.strftime('%H:%M:%S', time.localtime(last['time']))}"
    return out
