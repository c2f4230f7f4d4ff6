"""The aggregator's compliance side: its own site policy (schemes, minimum silos, which silos may
join), checked before it binds its socket; the first ledger entry of a run; ``aggregator audit``
(the same command group as ``silo audit``, from :mod:`fedalign.host.audit_cli`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from fedalign.compliance.software import software_versions
from fedalign.host.audit_cli import Peer, make_audit_app
from fedalign.protocol.config.policy import AggregatorSitePolicy, load_aggregator_policy
from fedalign.compliance.ledger import Ledger
from fedalign.compliance.policy import check_aggregator_config, key_fingerprint, policy_digest, raise_if_violated

__all__ = ["check_config", "keygen_aggregator", "load_identity_checked", "record_run_start", "app"]


def check_config(cfg: Any, roster_silos: Sequence[str]) -> AggregatorSitePolicy | None:
    """Check aggregator.toml and its roster against ``policy`` (if set); one error names every clause."""
    if cfg.policy is None:
        return None
    path = cfg.resolve(cfg.policy)
    policy = load_aggregator_policy(path)
    raise_if_violated(check_aggregator_config(cfg, policy, roster_silos), path)
    return policy


def keygen_aggregator(out_dir: Path | str, name: str, *, overwrite: bool = False) -> tuple[Path, Path, Path, str]:
    """Write the aggregator's CURVE pair and Ed25519 identity (0600) into ``out_dir``; return their paths
    and the roster's ``[aggregator]`` entry (also written beside them as ``<name>.roster.toml``)."""
    from fedalign.crypto.errors import SecureSumUsageError
    from fedalign.crypto.identity import generate_identity, load_identity, save_identity
    from fedalign.protocol.config.roster import aggregator_entry_toml
    from fedalign.protocol.errors import ConfigError
    from fedalign.protocol.keys import load_public, write_keypair

    d = Path(out_dir)
    ident = d / f"{name}.identity"
    if ident.exists():
        if not overwrite:
            raise ConfigError(f"{ident} exists; pass --overwrite to replace it (silos and auditors that trust the old "
                              "identity then refuse this aggregator's ledger)")
        ident.unlink()
    pub, sec = write_keypair(d, name, role="aggregator", overwrite=overwrite)
    try:
        save_identity(generate_identity(), ident)
    except SecureSumUsageError as e:
        raise ConfigError(str(e)) from e
    entry = aggregator_entry_toml(load_public(pub), load_identity(ident).public_hex)
    from fedalign.host.atomic import atomic_write_text
    from fedalign.protocol.files import PUBLIC_FILE_MODE

    atomic_write_text(d / f"{name}.roster.toml", entry, mode=PUBLIC_FILE_MODE)  # public keys only: 0644, any umask
    return pub, sec, ident, entry


def load_identity_checked(cfg: Any, roster: Any, keypair: Any) -> Any:
    """The aggregator's identity (``server.identity_key``), checked against the roster's ``[aggregator]``
    entry: a roster that names an aggregator identity needs this one, and its CURVE key this one's."""
    from fedalign.crypto.errors import SecureSumUsageError
    from fedalign.crypto.identity import load_identity
    from fedalign.protocol.errors import ConfigError

    entry = roster.aggregator
    roster_path = cfg.resolve(cfg.server.roster)
    if entry is not None and entry.curve_public_key is not None and keypair is not None \
            and keypair.public != entry.curve_public_key:
        raise ConfigError(f"server.secret_key's public half is not the [aggregator] curve_public_key of {roster_path}")
    if cfg.server.identity_key is None:
        if entry is not None:
            raise ConfigError(f"{roster_path} names the aggregator's identity ([aggregator]) but server.identity_key is "
                              "unset: set it to the identity file `aggregator keygen` wrote")
        return None
    path = cfg.resolve(cfg.server.identity_key)
    try:
        identity = load_identity(path)
    except SecureSumUsageError as e:
        raise ConfigError(f"server.identity_key: {e}") from e
    if entry is not None and identity.public_hex != entry.identity_public_key:
        raise ConfigError(f"server.identity_key {path} is not the [aggregator] identity_public_key of {roster_path}")
    return identity


def record_run_start(ledger: Ledger, cfg: Any, policy: AggregatorSitePolicy | None, roster: Any,
                     *, curve_public: str | None, resumed_round: int, identity: Any = None,
                     init: dict | None = None) -> None:
    """The first entry of a run (policy and its hash, settings, transport, and θ_0: where it came
    from and its digests, ``init``) in the aggregator's ledger."""
    ledger.append("run_start", {
        "role": "aggregator",
        "policy": policy.model_dump(mode="json") if policy is not None else None,
        "policy_sha256": policy_digest(policy),
        "policy_file": str(cfg.resolve(cfg.policy)) if cfg.policy is not None else None,
        "resumed_round": resumed_round,
        "init": init,
        "software": software_versions(),
        "settings": {"scheme": cfg.secure_sum.scheme, "min_silos": cfg.run.min_silos, "rounds": cfg.run.rounds,
                     "clip": cfg.secure_sum.clip, "neighbours": cfg.secure_sum.neighbours,
                     "strategy": cfg.strategy.name, "roster": sorted(roster.silos)},
        "identity_key": "ed25519:" + identity.public_hex if identity is not None else None,
        "transport": {"bind": cfg.server.bind, "curve": curve_public is not None,
                      "aggregator_key": key_fingerprint(curve_public) if curve_public else None,
                      "allowlist": {s: key_fingerprint(k) for s, k in sorted(roster.curve_keys().items())}
                      if curve_public else {}},
    }, now=time.time())


def _ledger_of(config: Path) -> Path:
    from fedalign.protocol.config.aggregator import load_aggregator_config

    return load_aggregator_config(config).out_dir / "ledger.jsonl"


def _key_of(config: Path) -> tuple[bytes | None, str]:
    """The key the aggregator's ledger is signed with: the roster's ``[aggregator]`` identity, else the
    public half of ``server.identity_key``; ``(None, why)`` when it signs nothing."""
    from fedalign.protocol.config.aggregator import load_aggregator_config
    from fedalign.protocol.config.roster import load_roster

    cfg = load_aggregator_config(config)
    roster_path = cfg.resolve(cfg.server.roster)
    agg = load_roster(roster_path).aggregator if roster_path.exists() else None
    if agg is not None:
        return bytes.fromhex(agg.identity_public_key), f"the roster {roster_path}, [aggregator]"
    if cfg.server.identity_key is not None:
        from fedalign.crypto.identity import load_identity

        path = cfg.resolve(cfg.server.identity_key)
        return bytes.fromhex(load_identity(path).public_hex), f"server.identity_key {path}"
    return None, f"{config} names no server.identity_key and its roster no [aggregator] (an unsigned ledger)"


def _peers_of(config: Path) -> tuple[str | None, list[Peer]]:
    """The silos' ledgers ``[audit] peer_ledgers`` names, each with the silo's identity from the roster."""
    from fedalign.protocol.config.aggregator import load_aggregator_config
    from fedalign.protocol.config.roster import load_roster
    from fedalign.protocol.errors import ConfigError

    cfg = load_aggregator_config(config)
    if not cfg.audit.peer_ledgers:
        return "aggregator", []
    roster_path = cfg.resolve(cfg.server.roster)
    roster = load_roster(roster_path)
    peers = []
    for silo, path in sorted(cfg.audit.peer_ledgers.items()):
        if silo not in roster.silos:
            raise ConfigError(f"{config}: audit.peer_ledgers names {silo!r}, which {roster_path} does not list")
        peers.append(Peer(silo, cfg.resolve(path), bytes.fromhex(roster.silos[silo].identity_public_key),
                          f"the roster {roster_path}, silo {silo!r}"))
    return "aggregator", peers


app = make_audit_app("aggregator", _ledger_of, _key_of, _peers_of)
