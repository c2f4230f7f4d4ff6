"""ChaCha20-Poly1305 with the nonce and associated data derived from the protocol context.

Each (key, context) pair is used for exactly one message, so a nonce hashed from the context
never repeats under one key; tampering or a context from another round/instance/stage fails.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedalign.crypto.errors import CryptoError
from fedalign.crypto.hazmat.encoding import canonical

__all__ = ["seal", "open_sealed"]


def _nonce_aad(context: tuple) -> tuple[bytes, bytes]:
    aad = canonical(b"fedalign/aead/v1", *context)
    return hashlib.sha256(aad).digest()[:12], aad


def seal(key: bytes, plaintext: bytes, *context: object) -> bytes:
    nonce, aad = _nonce_aad(context)
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, ciphertext: bytes, *context: object) -> bytes:
    """Decrypt; raise :class:`CryptoError` if the ciphertext or its context was altered."""
    nonce, aad = _nonce_aad(context)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError, TypeError):
        raise CryptoError("authenticated decryption failed") from None
