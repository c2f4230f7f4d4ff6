"""The projector's key layouts: ours (``0.weight``, ``2.weight``: the projector's ``nn.Sequential``),
LLaVA's (``model.mm_projector.0.weight``; ``model.mm_projector.weight`` for ``linear``) and Hugging Face
Llava's (``multi_modal_projector.linear_1.weight``, mlp2x_gelu only). Pure key mapping, shared by the
silo's export and the aggregator's θ_0 (``init.params`` may be any of the three).
"""

from __future__ import annotations

from typing import TypeVar

from fedalign.protocol.errors import ConfigError

__all__ = ["projector_kind", "to_llava_layout", "from_llava_layout", "to_hf_llava_layout", "from_hf_llava_layout",
           "to_our_layout"]

T = TypeVar("T")
_HF = {"0": "linear_1", "2": "linear_2"}


def projector_kind(state: dict[str, T]) -> str:
    """``mlp2x_gelu`` or ``linear`` for a state dict in our layout; ConfigError otherwise."""
    keys = set(state)
    if keys == {"0.weight", "0.bias", "2.weight", "2.bias"}:
        return "mlp2x_gelu"
    if keys == {"0.weight", "0.bias"}:
        return "linear"
    raise ConfigError(f"not a projector state dict (keys {sorted(keys)})")


def to_llava_layout(state: dict[str, T]) -> dict[str, T]:
    """Our keys (``0.weight``...) -> LLaVA's ``model.mm_projector.*``."""
    if projector_kind(state) == "linear":
        return {f"model.mm_projector.{k.split('.', 1)[1]}": v for k, v in state.items()}
    return {f"model.mm_projector.{k}": v for k, v in state.items()}


def from_llava_layout(state: dict[str, T]) -> dict[str, T]:
    """LLaVA's keys back to ours (accepts with or without the ``model.`` prefix)."""
    out = {}
    for k, v in state.items():
        rest = k.removeprefix("model.").removeprefix("mm_projector.")
        out[rest if rest[0].isdigit() else f"0.{rest}"] = v
    projector_kind(out)
    return out


def to_hf_llava_layout(state: dict[str, T]) -> dict[str, T]:
    """Our keys -> HF ``LlavaForConditionalGeneration``'s ``multi_modal_projector.linear_{1,2}.*``."""
    if projector_kind(state) != "mlp2x_gelu":
        raise ConfigError("the HF Llava layout needs projector = 'mlp2x_gelu' (HF's projector has two linears)")
    return {f"multi_modal_projector.{_HF[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in state.items()}


def from_hf_llava_layout(state: dict[str, T]) -> dict[str, T]:
    """HF Llava's ``[model.]multi_modal_projector.linear_{1,2}.*`` back to ours."""
    back = {v: k for k, v in _HF.items()}
    out = {}
    for k, v in state.items():
        layer, _, param = k.removeprefix("model.").removeprefix("multi_modal_projector.").partition(".")
        if layer not in back:
            raise ConfigError(f"not an HF Llava projector key: {k!r}")
        out[f"{back[layer]}.{param}"] = v
    projector_kind(out)
    return out


def to_our_layout(state: dict[str, T]) -> dict[str, T]:
    """A state dict in LLaVA's or HF Llava's projector layout, in ours (ConfigError if its keys are not a
    whole projector); any other state dict unchanged (the round's parameters need not be a projector)."""
    keys = list(state)
    if keys and all("multi_modal_projector." in k for k in keys):
        return from_hf_llava_layout(state)
    if keys and all("mm_projector." in k for k in keys):
        return from_llava_layout(state)
    return state
