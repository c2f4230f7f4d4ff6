"""Sum functions the simulator plugs into its round loop: plain (insecure) and, when present, crypto's.

A sum function takes the surviving silos' contributions of one phase (same names and shapes)
and returns only their element-wise sums as a :class:`common.strategy.Sums`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from common.errors import ProtocolError
from common.strategy import Sums, Tensors

__all__ = ["SumFn", "PLAIN_LABEL", "plain_sum_insecure", "check_contributions", "crypto_secure_sum", "secure_sum_label"]

SumFn = Callable[[Sequence[Tensors]], Sums]

PLAIN_LABEL = "plain (insecure, simulation)"


def check_contributions(contributions: Sequence[Tensors]) -> None:
    """Every silo must send the same names and shapes; say which silo and tensor differ."""
    if not contributions:
        raise ProtocolError("secure sum: no contributions (no silo survived the phase)")
    ref = {k: tuple(v.shape) for k, v in contributions[0].items()}
    for i, c in enumerate(contributions[1:], start=1):
        got = {k: tuple(v.shape) for k, v in c.items()}
        if got != ref:
            bad = sorted(set(ref.items()) ^ set(got.items()))
            raise ProtocolError(f"secure sum: silo #{i} contribution differs from silo #0 in {bad[:3]}")


def plain_sum_insecure(contributions: Sequence[Tensors]) -> Sums:
    """Element-wise sums in the clear: simulation and debugging only, NOT secure aggregation.

    Accumulated in float64 and cast back, so the silos' order changes the result by float64
    rounding at most (secure sums over fixed point are exactly order-free).
    """
    check_contributions(contributions)
    out = {}
    for name, first in contributions[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for c in contributions:
            acc += c[name].to(torch.float64)
        out[name] = acc.to(first.dtype)
    return Sums(tensors=out, n_silos=len(contributions))


def secure_sum_label(mode: str, clip: float) -> str:
    """How outputs name a crypto/ secure sum."""
    return f"{mode} (crypto.secure_sum_inprocess, clip {clip:g})"


def crypto_secure_sum(mode: str = "secagg", clip: float = 8.0, threshold: int | None = None) -> SumFn:
    """crypto/'s real secure sum (SecAgg or CKKS) run in process, as a :data:`SumFn`.

    Every call is a fresh instance (fresh keys, new instance id). ``clip`` is the declared bound
    on every contribution value; a larger value raises crypto's EncodingOverflow rather than
    wrapping. ``threshold`` defaults to a strict majority of the roster.
    """
    from crypto.config import SecureSumConfig
    from crypto.inprocess import secure_sum_inprocess

    counter = iter(range(2**62))

    def fn(contributions: Sequence[Tensors]) -> Sums:
        check_contributions(contributions)
        n = len(contributions)
        cfg = SecureSumConfig(
            mode=mode, threshold=threshold or n // 2 + 1, clip=clip, allow_insecure_plaintext=False
        )
        inputs = {
            f"silo-{k:03d}": {name: t.detach().cpu().to(torch.float32).numpy() for name, t in c.items()}
            for k, c in enumerate(contributions)
        }
        res = secure_sum_inprocess(inputs, cfg, instance_id=next(counter))
        if len(res.included) != n:
            raise ProtocolError(f"secure sum included {len(res.included)} of {n} silos")
        first = contributions[0]
        return Sums(
            {name: torch.from_numpy(res.sums[name]).to(first[name].dtype).reshape(first[name].shape) for name in first},
            n_silos=n,
        )

    return fn
