"""Export the trained projector as safetensors in LLaVA's and Hugging Face Llava's key layouts
(:mod:`fedalign.projector.keys`; HF's projector is always two linears with an activation, so
``linear`` has no HF layout). Files are written atomically with the projector kind in the metadata.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

from fedalign.host.atomic import atomic_write_bytes
from fedalign.projector.keys import from_llava_layout, projector_kind, to_hf_llava_layout, to_llava_layout

__all__ = ["to_llava_layout", "to_hf_llava_layout", "from_llava_layout", "export_projector", "load_projector_file",
           "write_silo_card"]


def export_projector(state: dict[str, torch.Tensor], out_dir: str | Path, *, metadata: dict[str, str] | None = None
                     ) -> dict[str, Path]:
    """Write ``mm_projector.safetensors`` (LLaVA) and, for mlp2x_gelu, ``hf_llava_projector.safetensors``."""
    out = Path(out_dir)
    kind = projector_kind(state)
    meta = {"projector_type": kind, "format": "pt", **(metadata or {})}
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    files = {"llava": out / "mm_projector.safetensors"}
    atomic_write_bytes(files["llava"], save(to_llava_layout(cpu), metadata={**meta, "layout": "llava"}))
    if kind == "mlp2x_gelu":
        files["hf_llava"] = out / "hf_llava_projector.safetensors"
        atomic_write_bytes(files["hf_llava"], save(to_hf_llava_layout(cpu), metadata={**meta, "layout": "hf_llava"}))
    return files


def load_projector_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a LLaVA-layout projector file back into our keys (safetensors: no code execution)."""
    return from_llava_layout(load_file(str(path)))


def write_silo_card(cfg, params: dict[str, torch.Tensor], files: dict[str, Path], *, rounds_done: int,
                    rounds_planned: int | None, included: list[int] | None, scheme: str | None,
                    records: int | None, epsilon: float | None) -> Path:
    """The model card (README.md, :mod:`fedalign.host.modelcard`) beside this silo's export: what this
    silo knows (its records, its ε from its accountant, its ledger's final head; not the other silos')."""
    from fedalign.host.modelcard import ledger_facts, write_card

    silo = cfg.federation.silo_id or "local"
    local = scheme is None
    ledger = cfg.state_dir / "ledger.jsonl"
    dp = bool(cfg.privacy.enabled)
    off = "off (privacy.enabled = false)"
    rounds = {"done": rounds_done, "planned": rounds_planned}
    if not local:
        rounds["included"] = included
    facts = {
        "writer": f"silo {cfg.federation.silo_id}" if cfg.federation.silo_id else "silo",
        "vision_tower": cfg.model.vision_tower, "llm": cfg.model.llm,
        "projector_kind": projector_kind(params), "projector_shapes": {k: list(v.shape) for k, v in params.items()},
        "files": [Path(f).name for k, f in files.items() if k in ("llava", "hf_llava")],
        "data": {silo: records},
        "rounds": rounds,
        "silos": f"{silo} alone (local training)" if local else
                 f"{silo}; the others are not known to this silo (it sees sums only): see the aggregator's card",
        "scheme": "none (local training)" if local else scheme,
        "strategy": "none (local training)" if local else cfg.strategy.name,
        "strategy_options": "none (local training)" if local else (dict(cfg.strategy.options) or "the strategy's defaults"),
        "survivors": "none (local training)" if local else "not known to this silo (the aggregator's card lists them)",
        "privacy": {silo: {"epsilon": epsilon if dp else off, "delta": cfg.privacy.delta if dp else off,
                           "source": "this silo's accountant"}},
        **ledger_facts(ledger),
        "verify_command": f"silo audit verify --config silo.toml   # silo.toml: this silo's config, in {cfg.base_dir}",
    }
    return write_card(Path(files["llava"]).parent, facts)
