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

__all__ = ["to_llava_layout", "to_hf_llava_layout", "from_llava_layout", "export_projector", "load_projector_file"]


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
