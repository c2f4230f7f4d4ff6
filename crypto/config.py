"""Configuration of one secure sum: mode, threshold, declared range, SecAgg+ graph, CKKS sizes."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from fedalign.crypto.errors import InsecurePlaintextRefused, SecureSumUsageError
from fedalign.crypto.hazmat.encoding import canonical
from fedalign.crypto.hazmat.fixedpoint import auto_fractional_bits, check_headroom
from fedalign.crypto.hazmat.graph import neighbours as _neighbours
from fedalign.crypto.schemes import scheme_spec

__all__ = ["SecureSumConfig"]


@dataclass(frozen=True, kw_only=True)
class SecureSumConfig:
    """How to sum: ``mode`` "secagg" (default choice), "ckks", or "plain" (insecure, debug only).

    threshold: Shamir threshold t / minimum survivors of every step. In secagg it must be a
        strict majority of each silo's group (all silos, or a silo and its neighbours).
    clip: the declared bound |x| <= clip on every input value; larger values raise.
    allow_insecure_plaintext: must be passed explicitly; True is required for mode "plain".
    fractional_bits: fixed-point bits; None picks the most that keep the sum exact.
    neighbours: None for the complete graph (SecAgg), or k for the SecAgg+ k-regular graph.
    graph_seed: public bytes mixed into the graph's shuffle (with round and instance ids).
    ckks_poly_modulus / ckks_scale_bits: CKKS parameters; slots per chunk = poly_modulus / 2.
    view: the caller's digest of everything its input depends on (the round's public values, the
        participant set, ...: ``fedalign.protocol.view``). Bound into the consistency signatures: the
        sum unmasks only when every survivor signed the same view, so an aggregator that showed two
        silos different public values gets nothing. Opaque bytes here.
    allow_dropouts: False when the instance must sum exactly its whole roster (a later phase of a
        multi-phase round: a dropout between phases would reveal the dropped silo's input through
        the difference of two sums). Every step then needs every silo, and a silo never reveals a
        mask-key share.
    """

    mode: str
    threshold: int
    clip: float
    allow_insecure_plaintext: bool
    fractional_bits: int | None = None
    neighbours: int | None = None
    graph_seed: bytes = b""
    ckks_poly_modulus: int = 8192
    ckks_scale_bits: int = 40
    view: bytes = b""
    allow_dropouts: bool = True

    def __post_init__(self) -> None:
        spec = scheme_spec(self.mode)  # a registered scheme (crypto/schemes.py)
        if not isinstance(self.allow_insecure_plaintext, bool):
            raise SecureSumUsageError("SecureSumConfig.allow_insecure_plaintext must be a bool")
        if spec.insecure:
            if not self.allow_insecure_plaintext:
                raise InsecurePlaintextRefused(
                    f'SecureSumConfig: mode "{self.mode}" sends every silo\'s update in the clear; '
                    "it needs allow_insecure_plaintext=True"
                )
            warnings.warn(
                f"INSECURE: secure sum in {self.mode} mode, the aggregator sees every silo's input",
                stacklevel=3,
            )
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 1:
            raise SecureSumUsageError(f"SecureSumConfig.threshold must be an int >= 1, got {self.threshold!r}")
        if not (isinstance(self.clip, (int, float)) and self.clip > 0 and math.isfinite(self.clip)):
            raise SecureSumUsageError(f"SecureSumConfig.clip must be a positive finite number, got {self.clip!r}")
        if self.neighbours is not None and (not isinstance(self.neighbours, int) or self.neighbours < 2):
            raise SecureSumUsageError(f"SecureSumConfig.neighbours must be None or an int >= 2, got {self.neighbours!r}")
        if self.fractional_bits is not None and not (isinstance(self.fractional_bits, int) and 0 <= self.fractional_bits <= 30):
            raise SecureSumUsageError(f"SecureSumConfig.fractional_bits must be None or 0..30, got {self.fractional_bits!r}")
        if not isinstance(self.view, bytes) or len(self.view) > 64:
            raise SecureSumUsageError("SecureSumConfig.view must be bytes (a digest, at most 64 bytes)")
        if not isinstance(self.allow_dropouts, bool):
            raise SecureSumUsageError("SecureSumConfig.allow_dropouts must be a bool")
        if not isinstance(self.graph_seed, bytes):
            raise SecureSumUsageError("SecureSumConfig.graph_seed must be bytes")
        if self.ckks_poly_modulus not in (8192, 16384) or not 20 <= self.ckks_scale_bits <= 50:
            raise SecureSumUsageError("SecureSumConfig: ckks_poly_modulus in {8192, 16384}, ckks_scale_bits in 20..50")

    def minimum(self, n_silos: int) -> int:
        """Silos every step needs: the threshold, or all ``n_silos`` when dropouts are not allowed."""
        return self.threshold if self.allow_dropouts else n_silos

    def frac_bits(self, n_silos: int) -> int:
        """Fractional bits for a roster of ``n_silos``; raises EncodingOverflow without headroom."""
        if self.fractional_bits is None:
            return auto_fractional_bits(float(self.clip), n_silos)
        check_headroom(float(self.clip), self.fractional_bits, n_silos)
        return self.fractional_bits

    def graph(self, ids, round_id: int, instance_id: int) -> dict[str, frozenset[str]]:
        """The public neighbour graph of this instance (complete when ``neighbours`` is None)."""
        seed = canonical(b"fedalign/secagg+/graph", self.graph_seed, round_id, instance_id)
        return _neighbours(ids, self.neighbours, seed)

    def check_roster(self, ids, round_id: int, instance_id: int) -> dict[str, frozenset[str]]:
        """Validate the threshold against the roster; return the graph."""
        n = len(ids)
        if n < 1:
            raise SecureSumUsageError("roster is empty")
        if self.threshold > n:
            raise SecureSumUsageError(f"threshold {self.threshold} exceeds the roster size {n}")
        graph = self.graph(ids, round_id, instance_id)
        if scheme_spec(self.mode).pairwise_masks:
            self.frac_bits(n)
            smallest = min(len(v) for v in graph.values()) + 1
            largest = max(len(v) for v in graph.values()) + 1
            if self.threshold > smallest or 2 * self.threshold <= largest:
                raise SecureSumUsageError(
                    f"threshold {self.threshold} must be a strict majority of every silo's group "
                    f"(a silo and its neighbours: {smallest}..{largest} silos)"
                )
        return graph
