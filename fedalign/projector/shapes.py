"""LLaVA's projectors as named tensors: ``linear`` (``0``) or ``mlp2x_gelu`` (``0``, GELU, ``2``): shapes,
initialisation, comparison."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from fedalign.protocol.errors import ConfigError

PROJECTOR_KINDS = ("linear", "mlp2x_gelu")


def _layers(kind: str, d_vision: int, d_model: int) -> list[tuple[str, int, int]]:
    """(module index, out, in) of each linear layer, in LLaVA's ``nn.Sequential`` numbering."""
    if kind == "linear":
        return [("0", d_model, d_vision)]
    if kind == "mlp2x_gelu":
        return [("0", d_model, d_vision), ("2", d_model, d_model)]
    raise ConfigError(f"model.projector must be one of {PROJECTOR_KINDS}, got {kind!r}")


def projector_shapes(kind: str, d_vision: int, d_model: int) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a ``kind`` projector from ``d_vision`` to ``d_model``."""
    out: dict[str, tuple[int, ...]] = {}
    for i, o, n_in in _layers(kind, d_vision, d_model):
        out[f"{i}.weight"], out[f"{i}.bias"] = (o, n_in), (o,)
    return out


def init_projector(kind: str, d_vision: int, d_model: int, *, generator: torch.Generator | None = None
                   ) -> dict[str, torch.Tensor]:
    """Float32 parameters initialised like ``nn.Linear`` (uniform in ±1/√fan_in, weight then bias,
    layer by layer) but drawn from ``generator``, so a run's projector is reproducible from its seed."""
    out: dict[str, torch.Tensor] = {}
    for i, o, n_in in _layers(kind, d_vision, d_model):
        bound = n_in**-0.5
        out[f"{i}.weight"] = torch.empty(o, n_in).uniform_(-bound, bound, generator=generator)
        out[f"{i}.bias"] = torch.empty(o).uniform_(-bound, bound, generator=generator)
    return out


def layout_mismatch(ours: Mapping[str, Sequence[int]], theirs: Mapping[str, Sequence[int]]
                    ) -> tuple[str, str, str] | None:
    """The first parameter whose shape differs (matrices first, then by name), as (name, our size,
    their size) with sizes written ``4096x1024`` or ``absent``; None when the layouts are equal."""
    a = {k: tuple(v) for k, v in ours.items()}
    b = {k: tuple(v) for k, v in theirs.items()}
    if a == b:
        return None
    order = sorted({*a, *b}, key=lambda k: (-len(a.get(k, b.get(k, ()))), k))
    first = next(k for k in order if a.get(k) != b.get(k))

    def size(shapes: dict) -> str:
        return "x".join(map(str, shapes[first])) if first in shapes else "absent"

    return first, size(a), size(b)
