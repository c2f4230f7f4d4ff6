"""The schemas of the site policies: ``policy.toml`` owned by an institution (silo) and the
aggregator operator's own (docs/design.md §10).

A site policy is separate from the training config and from anything the aggregator sends: the
config says what a run will do, the policy what the institution allows. ``silo train`` checks its
config against the policy before it loads any data (:func:`fedalign.compliance.policy.check_silo_config`)
and every RoundStart and SumStart during the run; the policy's hash is the first entry the run
writes to its ledger. See docs/compliance.md for a commented example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedalign.protocol.config import SchemeName, StrictModel, load_config

__all__ = [
    "SecureSumRules",
    "PrivacyRules",
    "RunRules",
    "AggregatorRules",
    "ReleaseRules",
    "RetentionRules",
    "StrategyRules",
    "SitePolicy",
    "AggregatorSumRules",
    "SiloRules",
    "AggregatorSitePolicy",
    "load_site_policy",
    "load_aggregator_policy",
]

Scheme = SchemeName


class SecureSumRules(StrictModel):
    schemes: list[Scheme] = Field(["secagg"], min_length=1, description="secure-sum schemes this site joins")
    min_silos: int = Field(3, ge=2, description="never put an input into a sum over fewer silos")
    allow_insecure_plaintext: bool = Field(False, description="may plaintext transport / plain sums be used at all")

    @model_validator(mode="after")
    def _plain_needs_permission(self) -> "SecureSumRules":
        if "plain" in self.schemes and not self.allow_insecure_plaintext:
            raise ValueError("'plain' in schemes needs allow_insecure_plaintext = true")
        return self


class PrivacyRules(StrictModel):
    dp_required: bool = Field(True, description="every run trains under record-level DP")
    max_epsilon_per_pass: float | None = Field(None, gt=0, description="ε one pass over the data may cost")
    max_epsilon: float | None = Field(None, gt=0, description="ε over the whole run (all passes)")
    max_delta: float | None = Field(None, gt=0, lt=1, description="largest δ any budget may use")


class RunRules(StrictModel):
    max_rounds: int | None = Field(None, ge=1, description="local trainings this silo runs in a federation (a retried round "
                                      "trains again and counts again); the next one is refused")
    max_passes: int | None = Field(None, ge=1, description="passes over the local data")


class AggregatorRules(StrictModel):
    key_fingerprints: list[str] = Field(
        default_factory=list,
        description="sha256:<hex> of the aggregator CURVE public keys this site may connect to; empty: any")

    @field_validator("key_fingerprints")
    @classmethod
    def _shape(cls, v: list[str]) -> list[str]:
        for fp in v:
            hexpart = fp.removeprefix("sha256:")
            if not fp.startswith("sha256:") or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
                raise ValueError(f"{fp!r} is not sha256:<64 lowercase hex digits> (see `silo audit fingerprint`)")
        return v


class ReleaseRules(StrictModel):
    export: bool = Field(True, description="may the exported projector be written for use outside the silo")
    evaluation: bool = Field(True, description="may evaluation outputs (metrics files) be written out")


class RetentionRules(StrictModel):
    raw_updates: Literal["keep_last", "delete_at_run_end"] = Field(
        "keep_last", description="the last trained update stays on disk (restart reuse), or is deleted when the run ends")


class StrategyRules(StrictModel):
    """Which federated strategies this site's silos may pin (silo.toml ``[strategy]``, docs/compliance.md)."""

    names: list[str] | None = Field(
        None, min_length=1, description="strategy names (fedcmp, fedavg, ...) silo.toml may pin; unset: any")
    allow_reliability_under_dp: bool = Field(
        False, description="may silo.toml set [strategy] allow_reliability_under_dp (Fed-CMP reliability under DP)")


class SitePolicy(StrictModel):
    """An institution's ``policy.toml``."""

    secure_sum: SecureSumRules = Field(default_factory=SecureSumRules)
    privacy: PrivacyRules = Field(default_factory=PrivacyRules)
    run: RunRules = Field(default_factory=RunRules)
    aggregator: AggregatorRules = Field(default_factory=AggregatorRules)
    release: ReleaseRules = Field(default_factory=ReleaseRules)
    retention: RetentionRules = Field(default_factory=RetentionRules)
    strategy: StrategyRules = Field(default_factory=StrategyRules)


class AggregatorSumRules(StrictModel):
    schemes: list[Scheme] = Field(["secagg"], min_length=1)
    min_silos: int = Field(3, ge=2, description="no round and no sum over fewer silos")


class SiloRules(StrictModel):
    allowed: list[str] = Field(default_factory=list, description="silo ids that may join; empty: the roster's")


class AggregatorSitePolicy(StrictModel):
    """The aggregator operator's ``policy.toml``."""

    secure_sum: AggregatorSumRules = Field(default_factory=AggregatorSumRules)
    silos: SiloRules = Field(default_factory=SiloRules)


def load_site_policy(path: str | Path) -> SitePolicy:
    """Load and validate an institution's policy file; ConfigError names the file and field."""
    return load_config(path, SitePolicy)


def load_aggregator_policy(path: str | Path) -> AggregatorSitePolicy:
    return load_config(path, AggregatorSitePolicy)
