"""TenSEAL CKKS helpers: context creation, (de)serialization with errors mapped, chunking.

Chunks hold at most min(4096, poly_modulus / 2) values: TenSEAL prints an unsilenceable
warning for vectors longer than 4096. Only additions are ever performed, so the modulus
chain is [60, scale_bits, 60] and no relinearization or Galois keys are made or sent.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from fedalign.crypto.errors import CryptoError

__all__ = ["chunk_slots", "new_context", "secret_context_bytes", "public_context_bytes", "load_context",
           "encrypt_chunks", "load_vector", "decrypt_chunks"]


def chunk_slots(poly_modulus: int) -> int:
    return min(4096, poly_modulus // 2)


def new_context(poly_modulus: int, scale_bits: int) -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus, coeff_mod_bit_sizes=[60, scale_bits, 60])
    ctx.global_scale = 2.0**scale_bits
    return ctx


def secret_context_bytes(ctx: ts.Context) -> bytes:
    return ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)


def public_context_bytes(ctx: ts.Context) -> bytes:
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def load_context(raw: bytes, *, private: bool) -> ts.Context:
    """Deserialize; CryptoError if malformed or if it does (not) hold the secret key as required."""
    try:
        ctx = ts.context_from(raw)
        ok = ctx.is_private() == private and ctx.has_public_key()
    except Exception:
        raise CryptoError("bad CKKS context") from None
    if not ok:
        raise CryptoError("bad CKKS context")
    return ctx


def encrypt_chunks(ctx: ts.Context, flat: np.ndarray, slots: int) -> tuple[bytes, ...]:
    return tuple(
        ts.ckks_vector(ctx, flat[i : i + slots].tolist()).serialize() for i in range(0, flat.size, slots)
    )


def load_vector(ctx: ts.Context, raw: object, size: int):
    """A CKKS vector of exactly ``size`` slots in use; CryptoError otherwise."""
    try:
        v = ts.ckks_vector_from(ctx, raw)
        ok = v.size() == size
    except Exception:
        raise CryptoError("bad CKKS ciphertext") from None
    if not ok:
        raise CryptoError("bad CKKS ciphertext")
    return v


def decrypt_chunks(ctx: ts.Context, chunks, total: int, slots: int, grid_bits: int) -> np.ndarray:
    """Decrypt and round to multiples of 2^-grid_bits.

    The rounding is a partial guard against key-recovery from published CKKS decryptions
    (Li & Micciancio, EUROCRYPT 2021): it removes the low-order noise bits that carry
    information about the secret key, except for values that land near a rounding boundary.
    """
    out = np.empty(total, dtype=np.float64)
    for i, raw in enumerate(chunks):
        lo = i * slots
        out[lo : min(lo + slots, total)] = load_vector(ctx, raw, min(slots, total - lo)).decrypt()
    scale = 2.0**grid_bits
    np.rint(out * scale, out=out)
    out /= scale
    return out
