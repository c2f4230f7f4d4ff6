"""WorldSpec: every knob of the embedded world's frozen models and their pretraining.

The spec (with a hash of the code that builds from it) keys the model cache, so two
equal specs always give the same files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from fedalign.protocol.errors import ConfigError

__all__ = ["WorldSpec", "TINY_SPEC"]


@dataclass(frozen=True)
class WorldSpec:
    """Sizes and budgets of the world's ViT and LM; defaults are the project's default world."""

    seed: int = 0
    counts: tuple[int, ...] = (1, 2, 3)
    n_pretrain_scenes: int = 12000
    # vision tower: ViT on 32x32 images, patch 8 -> 16 patch tokens
    vit_hidden: int = 96
    vit_layers: int = 3
    vit_heads: int = 4
    vit_intermediate: int = 192
    # more small steps beat fewer large ones: small shapes read 33% (900 x 96) -> 54% (3600 x 48)
    vision_steps: int = 3600
    vision_batch: int = 48
    vision_lr: float = 3e-3
    # causal LM: Llama with the world's word-level tokenizer
    lm_hidden: int = 128
    lm_layers: int = 2
    lm_heads: int = 4
    lm_intermediate: int = 256
    lm_steps: int = 900
    lm_batch: int = 40
    lm_lr: float = 3e-3
    lm_tie_embeddings: bool = False
    qa_share: float = 0.3  # share of LM pretraining texts that open with a probe Q/A
    lm_extra_qa: int = 1  # further Q/A pairs appended to every pretraining text
    p_placeholder_prefix: float = 0.1  # whole prefix replaced by <ph> tokens
    p_no_prefix: float = 0.05  # no prefix at all (text after <s> directly)
    p_token_dropout: float = 0.05  # share of prefix tokens replaced by <ph> otherwise
    # Gaussian noise on prefix word embeddings, std ~ U(0, prefix_noise) x their RMS: the LM
    # learns to read approximate words, as a trained projector produces
    prefix_noise: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") or f.name in ("qa_share", "prefix_noise"):
                if not 0.0 <= v <= 1.0:
                    raise ConfigError(f"WorldSpec.{f.name} must lie in [0, 1], got {v!r}")
            elif isinstance(v, int) and not isinstance(v, bool) and f.name not in ("seed", "lm_extra_qa") and v < 1:
                raise ConfigError(f"WorldSpec.{f.name} must be >= 1, got {v!r}")
        if self.p_placeholder_prefix + self.p_no_prefix > 1.0:
            raise ConfigError("WorldSpec: p_placeholder_prefix + p_no_prefix must not exceed 1")
        # at most 3 objects: one quadrant stays empty and carries the background word
        if not self.counts or any(not 1 <= c <= 3 for c in self.counts):
            raise ConfigError(f"WorldSpec.counts must be object counts in 1..3, got {self.counts!r}")
        for name, hidden, heads in (("vit", self.vit_hidden, self.vit_heads), ("lm", self.lm_hidden, self.lm_heads)):
            if hidden % heads:
                raise ConfigError(f"WorldSpec.{name}_hidden ({hidden}) must be divisible by {name}_heads ({heads})")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "WorldSpec":
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"WorldSpec: unknown fields {sorted(unknown)}")
        if "counts" in raw:
            raw["counts"] = tuple(raw["counts"])
        return cls(**raw)


# A world that builds in seconds, for tests: same language and images, toy models.
TINY_SPEC = WorldSpec(
    n_pretrain_scenes=256,
    vit_hidden=32,
    vit_layers=2,
    vit_heads=2,
    vit_intermediate=64,
    vision_steps=15,
    vision_batch=32,
    lm_hidden=32,
    lm_layers=1,
    lm_heads=2,
    lm_intermediate=64,
    lm_steps=15,
    lm_batch=16,
)
