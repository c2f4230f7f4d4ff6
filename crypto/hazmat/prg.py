"""Masks from an AES-256-CTR keystream, added into uint32 buffers in cache-sized chunks.

One cipher per mask key, one ``update_into`` per chunk into a reused scratch buffer, and one
in-place ``np.add``/``np.subtract`` per chunk: no per-element Python, no large temporaries.
Keys must be unique per (instance, purpose): the nonce is fixed at zero.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["CHUNK_WORDS", "keystream", "apply_masks"]

CHUNK_WORDS = 1 << 16  # 256 KiB of uint32: stays in L2 while all masks are added
_ZERO_NONCE = bytes(16)


def _encryptor(key: bytes):
    if len(key) != 32:
        raise ValueError("mask keys are 32 bytes")
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()


def keystream(key: bytes, n_words: int) -> np.ndarray:
    """The first ``n_words`` uint32 words of AES-256-CTR(key, nonce 0). For tests and benchmarks."""
    buf = np.zeros(n_words * 4 + 16, dtype=np.uint8)
    _encryptor(key).update_into(buf[: n_words * 4], buf)
    return buf[: n_words * 4].view(np.uint32)


def apply_masks(
    target: np.ndarray,
    add_keys: Sequence[bytes] = (),
    sub_keys: Sequence[bytes] = (),
    chunk_words: int = CHUNK_WORDS,
) -> None:
    """In place: target += sum(PRG(k) for k in add_keys) - sum(PRG(k) for k in sub_keys) mod 2^32.

    ``target`` is a contiguous 1-D uint32 array; element i of a mask is word i of its keystream.
    """
    if target.dtype != np.uint32 or target.ndim != 1 or not target.flags.c_contiguous:
        raise ValueError("target must be a contiguous 1-D uint32 array")
    jobs = [(_encryptor(k), np.add) for k in add_keys] + [(_encryptor(k), np.subtract) for k in sub_keys]
    if not jobs:
        return
    n = target.size
    step = min(chunk_words, max(n, 1))
    zeros = bytes(step * 4)
    scratch = np.empty(step * 4 + 16, dtype=np.uint8)
    words = scratch[: step * 4].view(np.uint32)
    for start in range(0, n, step):
        stop = min(start + step, n)
        m = stop - start
        dst = target[start:stop]
        src = memoryview(zeros)[: m * 4]
        for enc, op in jobs:
            enc.update_into(src, scratch)
            op(dst, words[:m], out=dst)
