"""X25519 key agreement and HKDF-SHA256 key derivation, with the protocol context bound in."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedalign.crypto.errors import CryptoError
from fedalign.crypto.hazmat.encoding import canonical

__all__ = [
    "new_x25519",
    "x25519_public_bytes",
    "x25519_private_bytes",
    "x25519_from_private_bytes",
    "hkdf",
    "agree",
]

_RAW = serialization.Encoding.Raw


def new_x25519() -> X25519PrivateKey:
    """A fresh X25519 key from the OS CSPRNG."""
    return X25519PrivateKey.generate()


def x25519_public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def x25519_private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def x25519_from_private_bytes(raw: bytes) -> X25519PrivateKey:
    try:
        return X25519PrivateKey.from_private_bytes(raw)
    except Exception:
        raise CryptoError("bad key material") from None


def hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 without salt (the secret is already uniform) and with ``info`` binding context."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def agree(private: X25519PrivateKey, peer_public: bytes, *context: object) -> bytes:
    """Shared 32-byte key: HKDF(X25519(private, peer), canonical(context)).

    Raises :class:`CryptoError` for a malformed peer key or an all-zero shared secret.
    """
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except Exception:
        raise CryptoError("key agreement failed") from None
    return hkdf(shared, canonical(*context))
