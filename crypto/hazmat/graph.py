"""The SecAgg+ neighbour graph: a k-regular Harary graph over a publicly seeded shuffle.

Every party derives the same graph from the roster and a public seed (round, instance,
config seed). With ``k`` None, or k >= n - 1, the graph is complete (plain SecAgg).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

__all__ = ["neighbours"]


def _public_order(ids: Sequence[str], seed: bytes) -> list[str]:
    # A sort by keyed hash is a uniformly random permutation (collisions are negligible).
    return sorted(ids, key=lambda s: hashlib.sha256(seed + s.encode()).digest())


def neighbours(ids: Sequence[str], k: int | None, seed: bytes) -> dict[str, frozenset[str]]:
    """Each id's neighbours (never itself). Degree k, or k + 1 when k and n are both odd."""
    ids = sorted(ids)
    n = len(ids)
    if k is None or k >= n - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    if k < 1:
        raise ValueError(f"neighbours must be >= 1, got {k}")
    order = _public_order(ids, seed)
    offsets = set(range(1, k // 2 + 1))
    if k % 2:
        if n % 2 == 0:
            offsets.add(n // 2)
        else:
            offsets.add(k // 2 + 1)
    out: dict[str, set[str]] = {u: set() for u in ids}
    for i, u in enumerate(order):
        for d in offsets:
            v = order[(i + d) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: frozenset(vs) for u, vs in out.items()}
