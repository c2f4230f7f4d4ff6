"""What a silo checks in the aggregator's messages before it uses them.

The wire decoder (``fedalign.protocol.wire``) already refuses frames that do not match their
declared spec, and each message's ``__post_init__`` its field types. What is left is content a
well-formed message can still carry and this silo cannot use: tensors of a non-float dtype, of
mixed dtypes, with NaN or infinity, or of another shape than this silo's projector. Each check
returns the problems as lines (empty: none); :class:`~fedalign.silo.participant.SiloParticipant`
refuses the message with :class:`~fedalign.protocol.errors.AggregatorInputError`, records the
refusal and leaves (docs/silo.md, "Bad input from the aggregator").
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["tensor_problems", "params_problems"]

_MAX_LISTED = 3


def tensor_problems(what: str, arrays: Mapping[str, object]) -> list[str]:
    """Each array must be a floating-point numpy array with only finite values."""
    out: list[str] = []
    for k, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            out.append(f"{what}[{k!r}] is {getattr(a, 'dtype', type(a).__name__)}, expected a float tensor")
        elif a.size and not np.isfinite(a).all():
            out.append(f"{what}[{k!r}] holds NaN or infinite values")
        if len(out) >= _MAX_LISTED:
            break
    return out


def params_problems(what: str, params: Mapping[str, object],
                    shapes: Mapping[str, tuple[int, ...]] | None) -> list[str]:
    """θ as the aggregator sent it: float and finite, one dtype for all, and (when this silo declared
    its projector) exactly its tensor names and shapes."""
    out = tensor_problems(what, params)
    if out:
        return out
    dtypes = sorted({str(a.dtype) for a in params.values()})  # type: ignore[attr-defined]
    if len(dtypes) > 1:
        out.append(f"{what} mixes dtypes {dtypes}")
    if shapes is not None:
        theirs = {k: tuple(a.shape) for k, a in params.items()}  # type: ignore[attr-defined]
        ours = {k: tuple(v) for k, v in shapes.items()}
        if theirs != ours:
            diff = sorted(set(theirs) ^ set(ours)) or sorted(k for k in ours if theirs[k] != ours[k])
            out.append(f"{what} does not fit this silo's projector (first difference: {diff[0]!r})")
    return out
