"""Ed25519 signatures over canonically encoded fields with a domain tag and protocol context.

The context (round id, instance id, stage, signer) is part of the signed bytes, so a
signature from another round, instance or stage never verifies here: replays fail.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedalign.crypto.errors import CryptoError
from fedalign.crypto.hazmat.encoding import canonical

__all__ = ["sign", "verify"]

_DOMAIN = b"fedalign/ed25519/v1"


def sign(key: Ed25519PrivateKey, *fields: object) -> bytes:
    return key.sign(canonical(_DOMAIN, *fields))


def verify(public_key: bytes, signature: bytes, *fields: object) -> None:
    """Raise :class:`CryptoError` unless ``signature`` signs ``fields`` under ``public_key``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, canonical(_DOMAIN, *fields))
    except (InvalidSignature, ValueError, TypeError):
        raise CryptoError("signature rejected") from None
