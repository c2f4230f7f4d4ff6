"""One view per round: the digest of everything a silo's contribution to a secure sum depends on.

A multi-phase strategy (Fed-CMP: basis, then coefficients) runs several secure sums per round,
each over an input linear in the same update. Each sum on its own reveals only a sum; together
they reveal only a function of one sum *if* every participant computed its inputs from the same
public values, over the same set. The aggregator sends each silo its own RoundStart and SumStart,
so it could equivocate (another basis for one silo, another participant set). The silos therefore
bind the digest below into the signatures of the secure sum's consistency step: a sum unmasks
only when every survivor signed the same view (``crypto`` checks the signatures; it never needs
to know what a view contains).

The view of phase ``p`` covers the RoundStart (round, θ_t, the round's public state, the round
seed, strategy name and resolved options, number of phases) and the phase's SumStart (phase,
instance, scheme, participants, threshold, clip, neighbour graph, CKKS size, and the public
values of every earlier phase), plus the participant set of phase 0 (the round's one set).
Both sides compute it from the messages themselves: the silo from what it received, the
aggregator from what it sent.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np

from fedalign.protocol.messages import RoundStart, SumStart

__all__ = ["arrays_digest", "round_view", "phase_view"]

_TAG = b"fedalign/round-view/v1\x00"


def _feed(h: "hashlib._Hash", *parts: bytes) -> None:
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)


def arrays_digest(arrays: Mapping[str, Any]) -> bytes:
    """SHA-256 over named arrays (numpy, or anything ``np.asarray`` takes): name, dtype, shape and
    bytes of each, in name order. The silo's state files key updates by the same digest of θ_t
    (``fedalign.silo.store.params_digest``), so a round's θ is hashed once."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[name]))
        h.update(name.encode() + b"\0" + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.digest()


def _options(options: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(options), sort_keys=True, separators=(",", ":"), default=repr).encode()


def round_view(start: RoundStart, params_digest: bytes | None = None) -> bytes:
    """The digest of what a RoundStart fixes for every phase of its round (``params_digest``: the
    caller's :func:`arrays_digest` of ``start.params``, when it has one already)."""
    h = hashlib.sha256(_TAG + b"round")
    theta = params_digest if params_digest is not None else arrays_digest(start.params)
    _feed(h, str(start.round).encode(), theta, arrays_digest(start.public), bytes(start.seed),
          start.strategy.encode(), _options(start.strategy_options), str(start.n_phases).encode())
    return h.digest()


def phase_view(round_digest: bytes, m: SumStart, round_set: tuple[str, ...]) -> bytes:
    """The view of phase ``m.phase``: the round's digest, the SumStart, and the round's participant set
    (phase 0's participants for phase 0; for later phases the set phase 0 summed)."""
    h = hashlib.sha256(_TAG + b"phase")
    _feed(h, round_digest, str(m.round).encode(), str(m.phase).encode(), str(m.instance).encode(),
          str(m.scheme).encode(), "\x00".join(m.participants).encode(), str(m.threshold).encode(),
          repr(float(m.clip)).encode(), str(m.neighbours).encode(), str(m.ckks_poly_modulus).encode(),
          arrays_digest(m.public), "\x00".join(sorted(round_set)).encode())
    return h.digest()
