"""Export the trained projector as safetensors in LLaVA's and Hugging Face Llava's key layouts
(:mod:`fedalign.protocol.layout`; HF's projector is always two linears with an activation, so
``linear`` has no HF layout). Files are written atomically with the projector kind in the metadata.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

from fedalign.host.atomic import atomic_write_bytes
from fedalign.protocol.layout import from_llava_layout, projector_kind, to_hf_llava_layout, to_llava_layout

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
                    rounds_planned: int | None, included: list[int] | None, scheme: str, records: int | None,
                    epsilon: float | None) -> Path:
    """The model card (README.md, :mod:`fedalign.host.modelcard`) beside this silo's export: what the
    silo knows of the run (its own records and ε, from its ledger; other silos' are not its to know)."""
    from fedalign.host.modelcard import ledger_facts, write_card

    silo = cfg.federation.silo_id or "local"
    head, witnessed = ledger_facts(cfg.state_dir / "ledger.jsonl")
    dp = bool(cfg.privacy.enabled)
    facts = {
        "writer": f"silo {silo}",
        "vision_tower": cfg.model.vision_tower, "llm": cfg.model.llm,
        "projector": {"kind": projector_kind(params), "shapes": {k: list(v.shape) for k, v in params.items()}},
        "files": [Path(f).name for k, f in files.items() if k in ("llava", "hf_llava")],
        "data": {silo: records if records is not None else "not known"},
        "rounds": {"done": rounds_done, "planned": rounds_planned, "included": included},
        "silos": {"note": "this silo alone (local training)" if scheme.startswith("none") else
                  "the others are not known to this silo (it sees sums only); see the aggregator's card"},
        "scheme": scheme,
        "strategy": cfg.strategy.name if not scheme.startswith("none") else "local (no federation)",
        "privacy": {silo: {"epsilon": epsilon if dp else None, "delta": cfg.privacy.delta if dp else None, "dp": dp,
                           "source": "this silo's ledger"}},
        "ledger": head, "witnessed": witnessed,
        "verify_command": "silo audit verify --config silo.toml",
    }
    return write_card(Path(files["llava"]).parent, facts)
