"""The aggregator's compliance side: its own site policy (schemes, minimum silos, which silos may
join), checked before it binds its socket; the first ledger entry of a run; ``aggregator audit``
(the same command group as ``silo audit``, from :mod:`fedalign.host.audit_cli`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from fedalign.host.audit_cli import make_audit_app
from fedalign.protocol.config.policy import AggregatorSitePolicy, load_aggregator_policy
from fedalign.protocol.ledger import Ledger
from fedalign.protocol.policy import check_aggregator_config, key_fingerprint, policy_digest, raise_if_violated

__all__ = ["check_config", "record_run_start", "app"]


def check_config(cfg: Any, roster_silos: Sequence[str]) -> AggregatorSitePolicy | None:
    """Check aggregator.toml and its roster against ``policy`` (if set); one error names every clause."""
    if cfg.policy is None:
        return None
    path = cfg.resolve(cfg.policy)
    policy = load_aggregator_policy(path)
    raise_if_violated(check_aggregator_config(cfg, policy, roster_silos), path)
    return policy


def record_run_start(ledger: Ledger, cfg: Any, policy: AggregatorSitePolicy | None, roster: Any,
                     *, curve_public: str | None, resumed_round: int) -> None:
    """The first entry of a run (policy and its hash, settings, transport) in the aggregator's ledger."""
    ledger.append("run_start", {
        "role": "aggregator",
        "policy": policy.model_dump(mode="json") if policy is not None else None,
        "policy_sha256": policy_digest(policy),
        "policy_file": str(cfg.resolve(cfg.policy)) if cfg.policy is not None else None,
        "resumed_round": resumed_round,
        "settings": {"scheme": cfg.secure_sum.scheme, "min_silos": cfg.run.min_silos, "rounds": cfg.run.rounds,
                     "clip": cfg.secure_sum.clip, "neighbours": cfg.secure_sum.neighbours,
                     "strategy": cfg.strategy.name, "roster": sorted(roster.silos)},
        "transport": {"bind": cfg.server.bind, "curve": curve_public is not None,
                      "aggregator_key": key_fingerprint(curve_public) if curve_public else None,
                      "allowlist": {s: key_fingerprint(k) for s, k in sorted(roster.curve_keys().items())}
                      if curve_public else {}},
    }, now=time.time())


def _ledger_of(config: Path) -> Path:
    from fedalign.protocol.config.aggregator import load_aggregator_config

    return load_aggregator_config(config).out_dir / "ledger.jsonl"


app = make_audit_app("aggregator", _ledger_of)
