"""Long-term Ed25519 identities of silos and the roster that maps silo ids to their public keys.

A silo signs its per-instance keys with its identity, so the aggregator cannot substitute
them. Private keys are stored as unencrypted PKCS#8 PEM files readable by the owner only.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedalign.crypto.errors import SecureSumUsageError

__all__ = [
    "AGGREGATOR",
    "IdentityKey",
    "generate_identity",
    "save_identity",
    "load_identity",
    "Roster",
]

AGGREGATOR = "aggregator"  # the sender name of every aggregator message; no silo may use it
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class IdentityKey:
    """A silo's long-term Ed25519 private key. Make one with :func:`generate_identity`."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey):
        if not isinstance(key, Ed25519PrivateKey):
            raise SecureSumUsageError("IdentityKey wraps an Ed25519PrivateKey")
        self._key = key

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte raw public key, as a roster lists it."""
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_hex(self) -> str:
        return self.public_bytes.hex()

    def __repr__(self) -> str:  # never print private material
        return f"IdentityKey(public={self.public_hex[:16]}...)"


def generate_identity() -> IdentityKey:
    """A fresh identity from the OS CSPRNG."""
    return IdentityKey(Ed25519PrivateKey.generate())


def save_identity(identity: IdentityKey, path: str | os.PathLike) -> None:
    """Write the private key as PKCS#8 PEM, created with mode 0600; never overwrite a file."""
    pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SecureSumUsageError(f"{path}: refusing to overwrite an existing identity file") from None
    os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def load_identity(path: str | os.PathLike) -> IdentityKey:
    """Read a key written by :func:`save_identity`; refuse files that others can read."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        data = p.read_bytes()
    except OSError as e:
        raise SecureSumUsageError(f"{p}: cannot read identity file ({e.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecureSumUsageError(f"{p}: identity file is accessible by group/others (mode {oct(mode & 0o777)}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SecureSumUsageError(f"{p}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SecureSumUsageError(f"{p}: not an Ed25519 key")
    return IdentityKey(key)


def _public_key_bytes(silo_id: str, key: bytes | str) -> bytes:
    if isinstance(key, str):
        try:
            key = bytes.fromhex(key)
        except ValueError:
            raise SecureSumUsageError(f"roster[{silo_id!r}]: public key is not hex") from None
    if not isinstance(key, bytes) or len(key) != 32:
        raise SecureSumUsageError(f"roster[{silo_id!r}]: an Ed25519 public key is 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(key)
    except ValueError:
        raise SecureSumUsageError(f"roster[{silo_id!r}]: invalid Ed25519 public key") from None
    return key


@dataclass(frozen=True, init=False)
class Roster:
    """silo_id -> Ed25519 public key (32 bytes). Ids sorted; Shamir point of a silo = index + 1."""

    members: Mapping[str, bytes]

    def __init__(self, members: Mapping[str, bytes | str]):
        checked = {}
        for sid in sorted(members):
            if not isinstance(sid, str) or not _ID.match(sid) or sid == AGGREGATOR:
                raise SecureSumUsageError(
                    f"roster: silo id {sid!r} must match {_ID.pattern} and not be {AGGREGATOR!r}"
                )
            checked[sid] = _public_key_bytes(sid, members[sid])
        if len(set(checked.values())) != len(checked):
            raise SecureSumUsageError("roster: two silos share one public key")
        object.__setattr__(self, "members", MappingProxyType(checked))

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, silo_id: object) -> bool:
        return silo_id in self.members

    def point(self, silo_id: str) -> int:
        """The silo's Shamir evaluation point (1-based position in sorted order)."""
        return self.ids.index(silo_id) + 1

    def to_hex(self) -> dict[str, str]:
        return {k: v.hex() for k, v in self.members.items()}
