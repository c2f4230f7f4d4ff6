"""The silo's compliance side: its site policy (checked before any data is loaded, and on every
RoundStart and SumStart), what it writes to its ledger for auditors, and ``silo audit``.

``silo audit verify LEDGER``  hash chain, signatures, heads, tail; first bad entry named; exit 0 intact,
                              11 broken or torn (``--config silo.toml`` finds the ledger and its key)
``silo audit show``           which checks ran; settings against policy, ε against budget, what left,
                              transport, threat model
``silo audit report``         the same as terminal tables, JSON (``--json``) and one HTML file (``--html``)
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable

from fedalign.compliance.software import software_versions
from fedalign.host.audit_cli import Peer, make_audit_app
from fedalign.protocol.config.policy import SitePolicy, load_site_policy
from fedalign.compliance.ledger import Ledger
from fedalign.compliance.policy import (check_silo_config, epsilon_per_pass_violations, key_fingerprint,
                                        policy_digest, raise_if_violated, sum_violations)

__all__ = ["load_policy", "check_config", "check_plan", "SiloAuditTrail", "attach_policy", "app"]


def load_policy(cfg: Any) -> tuple[SitePolicy | None, Path | None]:
    """The site policy named by the config's ``policy`` field (or ``--policy``), or (None, None)."""
    path = cfg.resolve(cfg.policy) if getattr(cfg, "policy", None) is not None else None
    return (load_site_policy(path), path) if path is not None else (None, None)


def _aggregator_fingerprint(cfg: Any) -> str | None:
    if cfg.federation.aggregator_public_key is None:
        return None
    from fedalign.protocol.keys import load_public

    return key_fingerprint(load_public(cfg.resolve(cfg.federation.aggregator_public_key)))


def check_config(cfg: Any, *, networked: bool) -> SitePolicy | None:
    """Check ``cfg`` against its site policy before any data is loaded; one error names every clause
    but ``privacy.max_epsilon_per_pass``, which bounds the run's DP plan (:func:`check_plan`)."""
    policy, path = load_policy(cfg)
    if policy is None:
        return None
    fp = _aggregator_fingerprint(cfg) if networked and policy.aggregator.key_fingerprints else None
    raise_if_violated(check_silo_config(cfg, policy, networked=networked, aggregator_fingerprint=fp), path)
    return policy


def check_plan(cfg: Any, policy: SitePolicy, plan: Any) -> None:
    """The policy's ``privacy.max_epsilon_per_pass`` against the run's one DP plan (a
    :class:`~fedalign.silo.privacy.DPPlan`, derived once the records are counted, before any model loads)."""
    _, path = load_policy(cfg)
    raise_if_violated(epsilon_per_pass_violations(cfg, policy, lambda: plan.epsilon_per_pass), path or "policy")


def _transport(cfg: Any, networked: bool) -> dict[str, Any]:
    fed = cfg.federation
    if not networked:
        return {"mode": "local (no network)"}
    out: dict[str, Any] = {"endpoint": fed.aggregator, "curve": fed.secret_key is not None
                           and fed.aggregator_public_key is not None}
    try:
        out["aggregator_key"] = _aggregator_fingerprint(cfg)
        if fed.secret_key is not None:
            from fedalign.protocol.keys import load_keypair

            out["own_curve_key"] = key_fingerprint(load_keypair(cfg.resolve(fed.secret_key)).public)
        if fed.identity_key is not None:
            from fedalign.crypto.identity import load_identity

            out["identity_key"] = "ed25519:" + load_identity(cfg.resolve(fed.identity_key)).public_hex
    except Exception as e:  # noqa: BLE001 - the run itself reports bad key files; the ledger says what it saw
        out["key_error"] = str(e)
    return out


class SiloAuditTrail:
    """What the silo writes to its ledger for auditors (kinds listed in :mod:`fedalign.compliance.audit`)."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float] = time.time) -> None:
        self.ledger, self.clock = ledger, clock

    def _append(self, kind: str, fields: dict[str, Any]) -> None:
        self.ledger.append(kind, fields, now=self.clock())

    def run_start(self, cfg: Any, policy: SitePolicy | None, *, networked: bool) -> None:
        """The first entry of a run: the policy (and its hash), the settings, the transport."""
        p, t = cfg.privacy, cfg.train
        _, path = load_policy(cfg)
        cfg_json = cfg.model_dump_json().encode()
        self._append("run_start", {
            "role": "silo", "silo": cfg.federation.silo_id, "mode": "federated" if networked else "local",
            "policy": policy.model_dump(mode="json") if policy is not None else None,
            "policy_sha256": policy_digest(policy), "policy_file": str(path) if path else None,
            "config_sha256": "sha256:" + hashlib.sha256(cfg_json).hexdigest(),
            "software": software_versions(),
            "settings": {
                "scheme": cfg.federation.scheme if networked else None,
                "min_silos": cfg.federation.min_silos if networked else None,
                "dp": {"enabled": p.enabled, "epsilon": p.epsilon if p.enabled else None,
                       "delta": p.delta if p.enabled else None, "noise_multiplier": p.noise_multiplier,
                       "max_grad_norm": p.max_grad_norm, "accountant": p.accountant, "sampling": "poisson"},
                "batch_size": t.batch_size, "shard_size": cfg.data.shard_size, "max_passes": cfg.data.max_passes,
                "rounds": None if networked else t.rounds},
            "transport": _transport(cfg, networked),
        })

    def refusal(self, fields: dict[str, Any]) -> None:
        self._append("refusal", fields)

    def release(self, fields: dict[str, Any]) -> None:
        f = dict(fields)
        f["payload_kind"] = f.pop("kind")
        self._append("release", f)

    def run_end(self, **fields: Any) -> None:
        self._append("run_end", fields)


def attach_policy(participant: Any, policy: SitePolicy | None, trail: SiloAuditTrail | None) -> None:
    """Make ``participant`` check every RoundStart and SumStart against ``policy`` and record refusals
    and releases in the ledger through ``trail``."""
    if policy is not None:
        participant.extra_sum_checks.append(lambda m: sum_violations(
            policy, scheme=str(m.scheme), participants=m.participants, threshold=m.threshold))
        participant.max_rounds = policy.run.max_rounds  # counts trainings, checked before each one
    if trail is not None:
        participant.on_refusal = trail.refusal
        participant.on_release = trail.release


# ---------------------------------------------------------------------------- CLI
def _ledger_of(config: Path) -> Path:
    from fedalign.protocol.config.silo import load_silo_config

    return load_silo_config(config).state_dir / "ledger.jsonl"


def _key_of(config: Path) -> tuple[bytes | None, str]:
    """The key this silo's ledger is signed with, as silo.toml finds it: ``(key, where from)``, or
    ``(None, why there is none)``.

    A silo signs its ledger when ``federation.identity_key`` is set (silo/session.py). The key is
    then the roster's ``identity_public_key`` for ``federation.silo_id`` when ``federation.roster``
    lists the silo (what an auditor trusts, and no private file needed); otherwise the identity
    file's public half. When both are readable they must agree (ConfigError, as ``silo join`` does).
    """
    from fedalign.protocol.config.roster import load_roster
    from fedalign.protocol.config.silo import load_silo_config
    from fedalign.protocol.errors import ConfigError

    cfg = load_silo_config(config)
    fed = cfg.federation
    if fed.identity_key is None:
        return None, f"{config} names no federation.identity_key (this silo does not sign its ledger)"
    roster_key: str | None = None
    where = ""
    if fed.roster is not None and fed.silo_id is not None:
        roster_path = cfg.resolve(fed.roster)
        roster = load_roster(roster_path)
        if fed.silo_id in roster.silos:
            roster_key = roster.silos[fed.silo_id].identity_public_key
            where = f"the roster {roster_path}, silo {fed.silo_id!r}"
    ident_path = cfg.resolve(fed.identity_key)
    file_key: str | None = None
    file_error = ""
    try:
        from fedalign.crypto.identity import load_identity

        file_key = load_identity(ident_path).public_hex
    except Exception as e:  # noqa: BLE001 - an auditor usually holds the roster, not the private file
        file_error = str(e)
    if roster_key is not None:
        if file_key is not None and file_key != roster_key:
            raise ConfigError(f"federation.identity_key {ident_path} does not match {fed.silo_id!r}'s identity in "
                              f"{cfg.resolve(fed.roster)}: which key signs this ledger is unclear")
        return bytes.fromhex(roster_key), where
    if file_key is not None:
        return bytes.fromhex(file_key), f"federation.identity_key {ident_path}"
    raise ConfigError(f"{config}: the silo signs its ledger (federation.identity_key) but its key cannot be found: "
                      f"the roster does not list federation.silo_id, and {file_error}; pass --public-key")


def _peers_of(config: Path) -> tuple[str | None, list[Peer]]:
    """This silo's name and the aggregator's ledger ``[audit] peer_ledger`` names, with the roster's
    ``[aggregator]`` identity (its ledger and its closing receipt are checked against it)."""
    from fedalign.protocol.config.roster import load_roster
    from fedalign.protocol.config.silo import load_silo_config

    cfg = load_silo_config(config)
    fed = cfg.federation
    key, source = None, ""
    if fed.roster is not None:
        roster_path = cfg.resolve(fed.roster)
        agg = load_roster(roster_path).aggregator
        if agg is not None:
            key, source = bytes.fromhex(agg.identity_public_key), f"the roster {roster_path}, [aggregator]"
    ledger = None if cfg.audit.peer_ledger is None else cfg.resolve(cfg.audit.peer_ledger)
    # without the aggregator's ledger its key still checks the closing receipt in this one
    return fed.silo_id, [Peer("aggregator", ledger, key, source)] if ledger is not None or key is not None else []


app = make_audit_app("silo", _ledger_of, _key_of, _peers_of)
