"""Export the trained projector as safetensors in LLaVA's and Hugging Face Llava's key layouts.

LLaVA (``mm_projector.bin``-style): ``model.mm_projector.0.weight`` ... for ``mlp2x_gelu``,
``model.mm_projector.weight`` for ``linear``. HF Llava: ``multi_modal_projector.linear_1.*``
and ``linear_2.*`` (HF's projector is always two linears with an activation, so ``linear`` has
no HF layout). Files are written atomically with the projector kind in the metadata.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

from fedalign.protocol.errors import ConfigError
from fedalign.host.atomic import atomic_write_bytes

__all__ = ["to_llava_layout", "to_hf_llava_layout", "from_llava_layout", "export_projector", "load_projector_file"]

_HF = {"0": "linear_1", "2": "linear_2"}


def _kind(state: dict[str, torch.Tensor]) -> str:
    keys = set(state)
    if keys == {"0.weight", "0.bias", "2.weight", "2.bias"}:
        return "mlp2x_gelu"
    if keys == {"0.weight", "0.bias"}:
        return "linear"
    raise ConfigError(f"not a projector state dict (keys {sorted(keys)})")


def to_llava_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys (``0.weight``...) -> LLaVA's ``model.mm_projector.*``."""
    if _kind(state) == "linear":
        return {f"model.mm_projector.{k.split('.', 1)[1]}": v for k, v in state.items()}
    return {f"model.mm_projector.{k}": v for k, v in state.items()}


def from_llava_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LLaVA's keys back to ours (accepts with or without the ``model.`` prefix)."""
    out = {}
    for k, v in state.items():
        rest = k.removeprefix("model.").removeprefix("mm_projector.")
        out[rest if rest[0].isdigit() else f"0.{rest}"] = v
    _kind(out)
    return out


def to_hf_llava_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> HF ``LlavaForConditionalGeneration``'s ``multi_modal_projector.linear_{1,2}.*``."""
    if _kind(state) != "mlp2x_gelu":
        raise ConfigError("the HF Llava layout needs projector = 'mlp2x_gelu' (HF's projector has two linears)")
    return {f"multi_modal_projector.{_HF[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in state.items()}


def export_projector(state: dict[str, torch.Tensor], out_dir: str | Path, *, metadata: dict[str, str] | None = None
                     ) -> dict[str, Path]:
    """Write ``mm_projector.safetensors`` (LLaVA) and, for mlp2x_gelu, ``hf_llava_projector.safetensors``."""
    out = Path(out_dir)
    kind = _kind(state)
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
