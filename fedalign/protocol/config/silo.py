"""The schema of ``silo.toml``: models, data, local training, differential privacy, output, and the
federated strategy the silo accepts.

Relative paths are resolved against the config file's directory (``base_dir``). Every field
has a default except the data paths a ``files`` source needs, so ``silo train --local`` runs on
the embedded world with no file at all. The runtime adds its own fields under ``[federation]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fedalign.protocol.config import FileConfig, SchemeName, StrictModel, load_config

__all__ = [
    "ModelSection",
    "WorldSection",
    "DataSection",
    "TrainSection",
    "PrivacySection",
    "EvalSection",
    "OutputSection",
    "FederationSection",
    "StrategySection",
    "SiloConfig",
    "load_silo_config",
    "EMBEDDED",
]

EMBEDDED = "embedded"  # model id meaning "the embedded world's tiny pretrained model"


class ModelSection(StrictModel):
    vision_tower: str = Field(EMBEDDED, description="HF hub id, local path, or 'embedded'")
    llm: str = Field(EMBEDDED, description="HF hub id, local path, or 'embedded'")
    gguf_file: str | None = Field(None, description="GGUF file name inside `llm` (e.g. SmolLM2)")
    projector: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"
    select_layer: int = -2
    select_feature: Literal["patch", "cls_patch"] = "patch"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_caption_tokens: int = Field(64, ge=1)


class WorldSection(StrictModel):
    """Which part of the embedded world this silo holds (used when ``data.source = 'world'``).

    ``silo_index`` None pools every silo's data (the centralized reference); an index gives
    that silo's share (local-only, or this silo's data in a federated run). ``options`` go to
    the world's scenario builder unchanged (purity, quantity_alpha, corrupt_fraction, ...).
    """

    scenario: str = "iid"
    n_silos: int = Field(1, ge=1)
    silo_index: int | None = Field(None, ge=0, description="None: all silos' data (centralized)")
    public: bool = Field(False, description="the coordinator's public set instead of silo data: samples_per_silo "
                                            "clean samples from their own random stream (Fed-CMP's reliability "
                                            "reference, `silo reference`)")
    alpha: float = Field(0.1, gt=0, description="Dirichlet concentration of label_skew")
    seed: int = 0
    samples_per_silo: int = Field(4096, ge=1)
    test_size: int = Field(400, ge=1, description="held-out captions (clean, pooled distribution)")
    probe_samples: int = Field(100, ge=0, description="held-out images turned into probe items")
    spec: Literal["default", "tiny"] = Field("default", description="which frozen world models")
    cache_dir: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="scenario-specific knobs")

    @model_validator(mode="after")
    def _index_in_range(self) -> "WorldSection":
        if self.silo_index is not None and self.silo_index >= self.n_silos:
            raise ValueError(f"silo_index {self.silo_index} must be < n_silos {self.n_silos}")
        return self


class DataSection(StrictModel):
    source: Literal["world", "files"] = "world"
    train: Path | None = None
    eval: Path | None = None
    eval_items: Path | None = Field(None, description="JSONL of probe items: image, prompt, candidates, answer, kind")
    image_root: Path | None = None
    format: Literal["auto", "llava_json", "jsonl"] = "auto"
    bad_records: Literal["skip", "fail"] = "fail"
    shard_size: int = Field(512, ge=1, description="records per round (one fresh shard each)")
    max_passes: int = Field(1, ge=1, description="1 = one-pass; more passes compose DP")
    world: WorldSection = Field(default_factory=WorldSection)

    @model_validator(mode="after")
    def _files_need_paths(self) -> "DataSection":
        if self.source == "files" and self.train is None:
            raise ValueError("source = 'files' needs data.train (a .json or .jsonl file)")
        return self


class TrainSection(StrictModel):
    rounds: int = Field(8, ge=1, description="local mode: how many shards to train on")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    local_steps: int | None = Field(None, ge=1, description="steps per round; default epochs*shard/batch")
    local_epochs: float = Field(1.0, gt=0)
    physical_batch_size: int | None = Field(None, ge=1, description="memory bound: run each logical batch as "
                                            "micro-batches of at most this many records (one optimizer step)")
    seed: int = 0
    public_basis: Path | None = Field(None, description="a public basis file (`silo public-basis`): train each "
                                      "weight only as W_t + U·C, so DP's noise lives in r·n values per matrix")

    @model_validator(mode="before")
    @classmethod
    def _prox_mu_is_the_strategys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "prox_mu" in data:
            raise ValueError("train.prox_mu is gone: FedProx's μ is the strategy's option (aggregator.toml "
                             "[strategy] name = \"fedprox\", options.mu), and each silo pins it in its own "
                             "[strategy]; delete train.prox_mu")
        return data


class PrivacySection(StrictModel):
    enabled: bool = False
    epsilon: float = Field(8.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    noise_multiplier: float | None = Field(
        None, gt=0, description="expert override; unset = derived from (epsilon, delta) for the planned schedule")
    max_grad_norm: float = Field(1.0, gt=0)
    accountant: Literal["rdp", "prv"] = "rdp"
    clipping: Literal["ghost", "per_sample"] = "ghost"
    insecure_seeded_noise: bool = Field(
        False, description="INSECURE, tests only: derive DP noise and sampling from train.seed"
    )


class EvalSection(StrictModel):
    batch_size: int = Field(64, ge=1)
    length_normalize: bool = True
    max_items: int | None = Field(None, ge=1)


class OutputSection(StrictModel):
    dir: Path = Path("silo-out")
    state_dir: Path | None = Field(None, description="cursor, accountant, ledger; default dir/state")


class FederationSection(StrictModel):
    """Where the aggregator is; the networked runtime reads these."""

    aggregator: str | None = None
    silo_id: str | None = None
    aggregator_public_key: Path | None = None
    secret_key: Path | None = None
    allow_insecure_plaintext: bool = False
    extra: dict[str, Any] = Field(default_factory=dict, description="runtime-specific options")
    # networked runtime (silo/participant.py, docs/runtime.md)
    roster: Path | None = Field(None, description="trusted roster.toml: every silo's CURVE and identity key")
    identity_key: Path | None = Field(None, description="this silo's Ed25519 identity (silo keygen)")
    min_silos: int = Field(3, ge=2, description="refuse secure sums over fewer silos")
    scheme: SchemeName = Field(
        "secagg", description="the secure-sum scheme this silo joins; a SumStart asking for another is refused")
    heartbeat_interval_s: float = Field(2.0, gt=0)
    aggregator_timeout_s: float = Field(600.0, gt=0, description="give up after this long without a message")
    wait_report_s: float = Field(10.0, gt=0, description="while the aggregator is silent, say so this often")
    max_weight: int | None = Field(None, ge=1, description="weight cap in records; default data.shard_size")
    receipt_timeout_s: float = Field(30.0, gt=0, description="after the run: how long to wait for the "
                                                             "aggregator's receipt of this silo's final ledger head")


class StrategySection(StrictModel):
    """The federated strategy this silo accepts, whatever the aggregator's RoundStart names.

    The silo resolves its own strategy from ``name`` and ``options`` (as aggregator.toml's
    ``[strategy]`` does, with ``dp`` = ``privacy.enabled``) and refuses a RoundStart whose name or
    resolved options differ, except options listed in ``ranges`` (any value in [min, max]) or
    ``free`` (any value). Checked against the strategy's own options at startup
    (``fedalign.silo.federation.strategy_pin``), since this schema knows no strategy.
    """

    name: str = Field("fedcmp", description="the one strategy this silo joins (a preset of fedalign.fedcmp)")
    options: dict[str, Any] = Field(default_factory=dict, description="FedCMPConfig fields, as aggregator.toml's "
                                                                      "[strategy] options")
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="option -> [min, max]: any value in it is accepted")
    free: list[str] = Field(["seed"], description="options accepted with any value (seed only picks the public "
                                                  "round-0 basis)")
    allow_reliability_under_dp: bool = Field(
        False, description="accept Fed-CMP reliability under DP (the aggregator's reference weighs each update)")

    @field_validator("ranges")
    @classmethod
    def _ranges_ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for k, (lo, hi) in v.items():
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{k} = [{lo:g}, {hi:g}]: both ends must be finite numbers")
            if lo > hi:
                raise ValueError(f"{k} = [{lo:g}, {hi:g}]: min {lo:g} is over max {hi:g}")
        return v

    @model_validator(mode="after")
    def _each_option_once(self) -> "StrategySection":
        # an option is pinned to one value (options), bounded (ranges) or accepted as sent (free): one of these
        for a, b in (("options", "ranges"), ("options", "free"), ("ranges", "free")):
            both = sorted(set(getattr(self, a)) & set(getattr(self, b)))
            if both:
                hint = ' (free defaults to ["seed"]: set free = [] to pin seed)' if b == "free" and "seed" in both \
                    and a == "options" else ""
                raise ValueError(f"{', '.join(both)} in both [strategy] {a} and {b}: an option is pinned (options), "
                                 f"bounded (ranges) or free (free), one of these{hint}")
        return self


class AuditSection(StrictModel):
    """What an auditor was given besides this config: the aggregator's ledger, which witnesses this one."""

    peer_ledger: Path | None = Field(None, description="a copy of the aggregator's ledger.jsonl")


# [train] under DP when the file names none of these: the measured recipe (results/notes/dp_notes.md; the
# quickstart's silos): large Poisson batches run as micro-batches, several passes over each shard. The
# plain defaults (batch 32, one pass) put the noise on the mean gradient (σ·√d/B) at tens of clip
# norms, where nothing is learned; the printed DP plan warns when a schedule is there.
DP_TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 256, "physical_batch_size": 128, "lr": 3e-3, "local_epochs": 4.0}


class SiloConfig(FileConfig):
    policy: Path | None = Field(None, description="the institution's site policy.toml (docs/compliance.md)")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    privacy: PrivacySection = Field(default_factory=PrivacySection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)
    federation: FederationSection = Field(default_factory=FederationSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    audit: AuditSection = Field(default_factory=AuditSection)

    @model_validator(mode="before")
    @classmethod
    def _dp_schedule_defaults(cls, data: Any) -> Any:
        """privacy.enabled with [train] silent on the schedule (none of batch_size, physical_batch_size,
        lr, local_epochs, local_steps set): DP_TRAIN_DEFAULTS. A file that sets any of them owns its
        schedule, and nothing of the recipe is mixed into it."""
        if not isinstance(data, dict):
            return data
        privacy = data.get("privacy")
        if not (isinstance(privacy, dict) and privacy.get("enabled") in (True, "true")):
            return data
        train = data.get("train", {})
        if not isinstance(train, dict) or set(train) & (set(DP_TRAIN_DEFAULTS) | {"local_steps"}):
            return data
        return {**data, "train": {**DP_TRAIN_DEFAULTS, **train}}

    @model_validator(mode="after")
    def _no_fedprox_in_a_basis(self) -> "SiloConfig":
        if self.train.public_basis is not None and self.strategy.name == "fedprox":
            raise ValueError("train.public_basis with [strategy] name = \"fedprox\": FedProx's pull towards θ_t acts on "
                             "every weight, not on the basis' coefficients; remove one of them")
        return self

    @property
    def state_dir(self) -> Path:
        return self.resolve(self.output.state_dir) or self.out_dir / "state"  # type: ignore[return-value]


def load_silo_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> SiloConfig:
    """Load and validate ``silo.toml`` (or defaults when ``path`` is None); ConfigError on any problem."""
    return load_config(path, SiloConfig, overrides)
