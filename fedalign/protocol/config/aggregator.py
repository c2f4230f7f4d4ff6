"""The schema of ``aggregator.toml``: where to listen, who may join, how rounds and sums run.

Relative paths resolve against the config file's directory. Insecure choices (plaintext
transport, plain sums) need ``server.allow_insecure_plaintext = true`` here (the site
policy) *and* ``--insecure-plaintext`` on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from fedalign.protocol.config import FileConfig, SchemeName, StrictModel, load_config

__all__ = [
    "ServerSection",
    "RunSection",
    "SecureSumSection",
    "StrategySection",
    "InitSection",
    "ReferenceSection",
    "AggregatorOutputSection",
    "AggregatorConfig",
    "load_aggregator_config",
]


class ServerSection(StrictModel):
    bind: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ endpoint the ROUTER binds")
    secret_key: Path | None = Field(Path("keys/aggregator.key_secret"), description="from `aggregator keygen`")
    identity_key: Path | None = Field(None, description="the aggregator's Ed25519 identity (`aggregator keygen`): "
                                                        "signs its ledger, its heads and the silos' closing receipts")
    roster: Path = Field(Path("roster.toml"), description="trusted silo keys (see docs/runtime.md)")
    allow_insecure_plaintext: bool = Field(False, description="site policy: may plaintext/plain sums be used at all")
    max_message_mb: int = Field(512, ge=1, le=4096)


class RunSection(StrictModel):
    rounds: int = Field(5, ge=1)
    min_silos: int = Field(3, ge=2, description="refuse a round (or a sum) with fewer silos")
    train_deadline_s: float = Field(600.0, gt=0, description="local training; silent silos drop out")
    step_deadline_s: float = Field(60.0, gt=0, description="each secure-sum step")
    heartbeat_timeout_s: float = Field(30.0, gt=0, description="a silo silent this long is not on the next roster")
    roster_wait_s: float = Field(600.0, gt=0, description="how long a round start waits for min_silos")
    report_interval_s: float = Field(10.0, gt=0, description="while waiting for silos: who is connected and missing")
    max_failed_rounds: int = Field(3, ge=1, description="consecutive aborted rounds before giving up")
    seed: int = Field(0, description="public: round seeds and Fed-CMP's initial basis")


class SecureSumSection(StrictModel):
    scheme: SchemeName = "secagg"
    clip: float = Field(16.0, gt=0, description="declared |value| bound of every contribution entry")
    neighbours: int | None = Field(None, ge=2, description="SecAgg+ graph degree; None = complete graph")
    ckks_poly_modulus: Literal[8192, 16384] = Field(
        8192, description="CKKS ring size; the only values crypto.config.SecureSumConfig accepts")


class StrategySection(StrictModel):
    name: str = "fedcmp"
    dp: bool = Field(False, description="the silos train under DP: Fed-CMP starts from its measured DP "
                                        "defaults (reliability off; docs/fedcmp.md) before `options` apply")
    options: dict[str, Any] = Field(default_factory=dict, description="the strategy's options: FedCMPConfig fields "
                                    "for fedcmp, mu and server_lr for fedprox, beta for fedavgm, ... "
                                    "(fedalign.fedcmp.strategies.PRESETS)")


class InitSection(StrictModel):
    """θ_0: a safetensors file, or a fresh projector of this kind and size."""

    params: Path | None = None
    projector: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    d_vision: int | None = Field(None, ge=1)
    d_model: int | None = Field(None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _need_source(self) -> "InitSection":
        if self.params is None and (self.d_vision is None or self.d_model is None):
            raise ValueError("set init.params (a .safetensors file) or both init.d_vision and init.d_model")
        return self


class ReferenceSection(StrictModel):
    """Fed-CMP reliability "reference" (its default): the coordinator's own update on a public set,
    trained each round by a ``silo reference`` process that ``aggregator serve`` starts (docs/fedcmp.md)."""

    config: Path | None = Field(None, description="a silo.toml with the silos' models and the coordinator's public "
                                                  "set (data.world.public = true, or files); privacy off")
    deadline_s: float = Field(600.0, gt=0, description="for loading the models, and for each round's reference")
    command: list[str] | None = Field(None, description="the process to run instead of this Python's "
                                                        "`-m fedalign.silo.cli reference --config <config>`")


class AuditSection(StrictModel):
    """What an auditor was given besides this config: the silos' ledgers, which witness this one."""

    peer_ledgers: dict[str, Path] = Field(default_factory=dict,
                                          description="silo name -> a copy of that silo's ledger.jsonl")


class AggregatorOutputSection(StrictModel):
    dir: Path = Path("aggregator-out")


class AggregatorConfig(FileConfig):
    policy: Path | None = Field(None, description="the operator's site policy.toml (docs/compliance.md)")
    server: ServerSection = Field(default_factory=ServerSection)
    run: RunSection = Field(default_factory=RunSection)
    secure_sum: SecureSumSection = Field(default_factory=SecureSumSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    init: InitSection
    reference: ReferenceSection = Field(default_factory=ReferenceSection)
    output: AggregatorOutputSection = Field(default_factory=AggregatorOutputSection)
    audit: AuditSection = Field(default_factory=AuditSection)


def load_aggregator_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> AggregatorConfig:
    """Load and validate ``aggregator.toml``; ConfigError names the file and the field."""
    return load_config(path, AggregatorConfig, overrides)
