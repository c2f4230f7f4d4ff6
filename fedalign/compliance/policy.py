"""Checking configs and requests against a site policy (``fedalign.protocol.config.policy``).

Every check returns the list of broken clauses, each one line that names the policy clause, the
config field or request value, and what the policy allows, so one error can name them all. The
silo runs :func:`check_silo_config` before loading any data and :func:`sum_violations` on every
SumStart (``run.max_rounds`` is checked before each local training, by the participant, since it
counts trainings, not round ids); the aggregator runs
:func:`check_aggregator_config` before it binds its socket.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from fedalign.protocol.config.policy import AggregatorSitePolicy, SitePolicy
from fedalign.protocol.errors import ConfigError, ProtocolError

__all__ = [
    "PolicyRefused",
    "PolicyViolation",
    "policy_digest",
    "key_fingerprint",
    "check_silo_config",
    "check_aggregator_config",
    "sum_violations",
    "raise_if_violated",
]


class PolicyRefused(ProtocolError):
    """The aggregator asked for something the site policy forbids; the silo refused and left."""


class PolicyViolation(ConfigError):
    """A config breaks its site policy; the message names every broken clause."""


def policy_digest(policy: SitePolicy | AggregatorSitePolicy | None) -> str | None:
    """SHA-256 of the policy's canonical JSON (what the ledger's ``run_start`` entry records)."""
    if policy is None:
        return None
    raw = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def key_fingerprint(public_z85: str) -> str:
    """``sha256:<hex>`` of a CURVE public key's 32 raw bytes (what policies and reports name)."""
    from fedalign.protocol.keys import z85_decode

    return "sha256:" + hashlib.sha256(z85_decode(public_z85)).hexdigest()


def check_silo_config(cfg: Any, policy: SitePolicy, *, networked: bool,
                      epsilon_of_pass: Callable[[], float] | None = None,
                      aggregator_fingerprint: str | None = None) -> list[str]:
    """Every clause of ``policy`` that the silo config ``cfg`` breaks (empty: it complies).

    ``epsilon_of_pass`` computes the planned ε of one pass (one shard's round, with the silo's own
    accountant); ``aggregator_fingerprint`` is that of ``federation.aggregator_public_key``.
    """
    out: list[str] = []
    ss, pr, run, fed = policy.secure_sum, policy.privacy, policy.run, cfg.federation
    if networked:
        if fed.scheme not in ss.schemes:
            out.append(f"secure_sum.schemes: federation.scheme = {fed.scheme!r} is not one of {ss.schemes}")
        if fed.min_silos < ss.min_silos:
            out.append(f"secure_sum.min_silos: federation.min_silos = {fed.min_silos} is under the policy's "
                       f"{ss.min_silos}")
    if fed.allow_insecure_plaintext and not ss.allow_insecure_plaintext:
        out.append("secure_sum.allow_insecure_plaintext: federation.allow_insecure_plaintext = true is not allowed")
    p = cfg.privacy
    if pr.dp_required and not p.enabled:
        out.append("privacy.dp_required: privacy.enabled = false, the policy requires DP")
    if p.enabled or pr.dp_required:
        if pr.max_epsilon is not None and p.epsilon > pr.max_epsilon:
            out.append(f"privacy.max_epsilon: privacy.epsilon = {p.epsilon:g} is over the policy's {pr.max_epsilon:g}")
        if pr.max_delta is not None and p.delta > pr.max_delta:
            out.append(f"privacy.max_delta: privacy.delta = {p.delta:g} is over the policy's {pr.max_delta:g}")
        if epsilon_of_pass is not None:
            out += epsilon_per_pass_violations(cfg, policy, epsilon_of_pass)
    if run.max_passes is not None and cfg.data.max_passes > run.max_passes:
        out.append(f"run.max_passes: data.max_passes = {cfg.data.max_passes} is over the policy's {run.max_passes}")
    if run.max_rounds is not None and not networked and cfg.train.rounds > run.max_rounds:
        out.append(f"run.max_rounds: train.rounds = {cfg.train.rounds} is over the policy's {run.max_rounds}")
    fps = policy.aggregator.key_fingerprints
    if networked and fps:
        if aggregator_fingerprint is None:
            out.append("aggregator.key_fingerprints: federation.aggregator_public_key is unset, the policy pins "
                       f"{len(fps)} key(s)")
        elif aggregator_fingerprint not in fps:
            out.append(f"aggregator.key_fingerprints: federation.aggregator_public_key has fingerprint "
                       f"{aggregator_fingerprint}, not one the policy allows")
    st = policy.strategy
    if networked and st.names is not None and cfg.strategy.name not in st.names:
        out.append(f"strategy.names: strategy.name = {cfg.strategy.name!r} is not one of {st.names}")
    if networked and cfg.strategy.allow_reliability_under_dp and not st.allow_reliability_under_dp:
        out.append("strategy.allow_reliability_under_dp: strategy.allow_reliability_under_dp = true is not allowed")
    return out


def epsilon_per_pass_violations(cfg: Any, policy: SitePolicy, epsilon_of_pass: Callable[[], float]) -> list[str]:
    """The ``privacy.max_epsilon_per_pass`` clause alone: ``epsilon_of_pass`` computes what one pass of
    the run's DP plan costs (called only when the clause applies)."""
    pr, p = policy.privacy, cfg.privacy
    if pr.max_epsilon_per_pass is None or not p.enabled:
        return []
    eps = epsilon_of_pass()
    if eps <= pr.max_epsilon_per_pass:
        return []
    return [f"privacy.max_epsilon_per_pass: one pass as configured costs ε = {eps:.4g} "
            f"(privacy.noise_multiplier {'derived' if p.noise_multiplier is None else format(p.noise_multiplier, 'g')}, train.batch_size "
            f"{cfg.train.batch_size}, data.shard_size {cfg.data.shard_size}), over the policy's "
            f"{pr.max_epsilon_per_pass:g}"]


def check_aggregator_config(cfg: Any, policy: AggregatorSitePolicy, roster_silos: Sequence[str]) -> list[str]:
    """Every clause of the aggregator's ``policy`` that ``cfg`` (aggregator.toml) and its roster break."""
    out: list[str] = []
    if cfg.secure_sum.scheme not in policy.secure_sum.schemes:
        out.append(f"secure_sum.schemes: secure_sum.scheme = {cfg.secure_sum.scheme!r} is not one of "
                   f"{policy.secure_sum.schemes}")
    if cfg.run.min_silos < policy.secure_sum.min_silos:
        out.append(f"secure_sum.min_silos: run.min_silos = {cfg.run.min_silos} is under the policy's "
                   f"{policy.secure_sum.min_silos}")
    allowed = policy.silos.allowed
    if allowed:
        extra = sorted(set(roster_silos) - set(allowed))
        if extra:
            out.append(f"silos.allowed: the roster lists {extra}, not allowed by the policy")
    return out


def sum_violations(policy: SitePolicy, *, scheme: str, participants: Sequence[str], threshold: int) -> list[str]:
    """What a SumStart asks that ``policy`` forbids (the scheme, the silo count, the threshold)."""
    ss = policy.secure_sum
    out = []
    if scheme not in ss.schemes:
        out.append(f"policy secure_sum.schemes {ss.schemes} does not allow scheme {scheme}")
    if len(participants) < ss.min_silos:
        out.append(f"{len(participants)} participants, policy secure_sum.min_silos is {ss.min_silos}")
    elif threshold < ss.min_silos:
        out.append(f"threshold {threshold} is under policy secure_sum.min_silos {ss.min_silos}")
    return out


def raise_if_violated(problems: list[str], source: str | Path) -> None:
    """One PolicyViolation naming every broken clause (nothing happens when there are none)."""
    if problems:
        raise PolicyViolation(f"{source}: the config breaks {len(problems)} clause(s) of the site policy: "
                              + "; ".join(problems))
