"""Sum functions the simulator plugs into the phase loop: plain (insecure) and crypto's secure sum.

A sum function takes the silos' inputs of one phase, already converted by
:func:`fedalign.fedcmp.phases.sum_inputs` exactly as a networked silo converts them (float64,
clipped to the sum's declared bound ``clip``), and returns only their element-wise sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from fedalign.protocol.errors import ProtocolError

__all__ = ["SumFn", "PLAIN_LABEL", "PlainSumInsecure", "CryptoSum", "plain_sum_insecure", "check_inputs",
           "crypto_secure_sum", "secure_sum_label"]

PLAIN_LABEL = "plain (insecure, simulation)"

Inputs = Sequence[Mapping[str, np.ndarray]]


class SumFn(Protocol):
    clip: float  # the declared bound on every input value (the silo clips to it, as over the network)
    label: str

    def __call__(self, inputs: Inputs) -> dict[str, np.ndarray]: ...


def check_inputs(inputs: Inputs) -> None:
    """Every silo must send the same names and shapes; say which silo and tensor differ."""
    if not inputs:
        raise ProtocolError("secure sum: no contributions (no silo survived the phase)")
    ref = {k: tuple(v.shape) for k, v in inputs[0].items()}
    for i, c in enumerate(inputs[1:], start=1):
        got = {k: tuple(v.shape) for k, v in c.items()}
        if got != ref:
            bad = sorted(set(ref.items()) ^ set(got.items()))
            raise ProtocolError(f"secure sum: silo #{i} contribution differs from silo #0 in {bad[:3]}")


@dataclass(frozen=True)
class PlainSumInsecure:
    """Element-wise sums in the clear (float64): simulation and debugging only, NOT secure aggregation."""

    clip: float = math.inf
    label: str = PLAIN_LABEL

    def __call__(self, inputs: Inputs) -> dict[str, np.ndarray]:
        check_inputs(inputs)
        return {k: np.sum([np.asarray(c[k], dtype=np.float64) for c in inputs], axis=0) for k in inputs[0]}


plain_sum_insecure = PlainSumInsecure()


def secure_sum_label(mode: str, clip: float) -> str:
    """How outputs name a crypto secure sum."""
    return f"{mode} (fedalign.crypto.secure_sum_inprocess, clip {clip:g})"


class CryptoSum:
    """crypto's real secure sum (SecAgg or CKKS) run in process; every call a fresh instance.

    ``clip`` is the declared bound on every input value; ``threshold`` defaults to a strict
    majority of the silos.
    """

    def __init__(self, mode: str = "secagg", clip: float = 8.0, threshold: int | None = None) -> None:
        self.mode, self.clip, self.threshold = mode, float(clip), threshold
        self.label = secure_sum_label(mode, clip)
        self._counter = iter(range(2**62))

    def __call__(self, inputs: Inputs) -> dict[str, np.ndarray]:
        from fedalign.crypto.config import SecureSumConfig
        from fedalign.crypto.inprocess import secure_sum_inprocess

        check_inputs(inputs)
        n = len(inputs)
        cfg = SecureSumConfig(mode=self.mode, threshold=self.threshold or n // 2 + 1, clip=self.clip,
                              allow_insecure_plaintext=False)
        named = {f"silo-{k:03d}": dict(c) for k, c in enumerate(inputs)}
        res = secure_sum_inprocess(named, cfg, instance_id=next(self._counter))
        if len(res.included) != n:
            raise ProtocolError(f"secure sum included {len(res.included)} of {n} silos")
        return {k: np.asarray(v, dtype=np.float64).reshape(inputs[0][k].shape) for k, v in res.sums.items()}


def crypto_secure_sum(mode: str = "secagg", clip: float = 8.0, threshold: int | None = None) -> CryptoSum:
    return CryptoSum(mode, clip, threshold)
