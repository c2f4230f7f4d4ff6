"""CURVE key pairs and key files for the transport (``silo keygen``, ``aggregator keygen``).

ZeroMQ's CURVE uses Curve25519 keys, the same as X25519, so keys are made by
``cryptography``'s X25519 (an OS-seeded CSPRNG) and written as ZeroMQ certificates
(Z85 text in the ZPL layout ``zmq.auth.load_certificate`` reads). Both files are created
with mode 0600 and never overwritten silently. This module needs no zmq.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from fedalign.protocol.errors import ConfigError
from fedalign.protocol.files import private_mkdir

__all__ = ["KeyPair", "z85_encode", "z85_decode", "generate", "write_keypair", "load_public", "load_keypair"]

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_INDEX = {c: i for i, c in enumerate(_Z85)}


def z85_encode(data: bytes) -> str:
    """ZeroMQ's Z85 (RFC 32) text for ``data`` (length a multiple of 4)."""
    if len(data) % 4:
        raise ValueError(f"z85 needs a multiple of 4 bytes, got {len(data)}")
    out = []
    for i in range(0, len(data), 4):
        v = int.from_bytes(data[i : i + 4], "big")
        chunk = []
        for _ in range(5):
            v, r = divmod(v, 85)
            chunk.append(_Z85[r])
        out.extend(reversed(chunk))
    return "".join(out)


def z85_decode(text: str) -> bytes:
    """Inverse of :func:`z85_encode`; raises ``ValueError`` on bad length or characters."""
    if len(text) % 5:
        raise ValueError(f"z85 text length must be a multiple of 5, got {len(text)}")
    out = bytearray()
    for i in range(0, len(text), 5):
        v = 0
        for c in text[i : i + 5]:
            if c not in _Z85_INDEX:
                raise ValueError(f"{c!r} is not a z85 character")
            v = v * 85 + _Z85_INDEX[c]
        if v >= 1 << 32:
            raise ValueError("z85 group out of range")
        out += v.to_bytes(4, "big")
    return bytes(out)


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair as Z85 text (40 characters each), the form zmq socket options take."""

    public: str
    secret: str | None = None

    def __repr__(self) -> str:  # never print a secret key
        return f"KeyPair(public={self.public!r}, secret={'<hidden>' if self.secret else None})"


def generate() -> KeyPair:
    """A fresh Curve25519 key pair from the OS CSPRNG."""
    sk = X25519PrivateKey.generate()
    raw_sk = sk.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyPair(public=z85_encode(raw_pk), secret=z85_encode(raw_sk))


_BANNER = "#   ZeroMQ CURVE {kind} Certificate, written by fedalign {what} keygen on {when}\n"


def _write_0600(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)


def write_keypair(directory: Path | str, name: str, *, role: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``<name>.key`` (public) and ``<name>.key_secret`` in ``directory``, both 0600.

    Refuses to replace existing files unless ``overwrite``: a silently rotated key would lock
    a silo out of every aggregator that allowlisted the old one.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ConfigError(f"key name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    d = Path(directory)
    private_mkdir(d)
    pub, sec = d / f"{name}.key", d / f"{name}.key_secret"
    for p in (pub, sec):
        if p.exists():
            if not overwrite:
                raise ConfigError(f"{p} exists; pass --overwrite to replace it (the old key stops working)")
            p.unlink()
    kp = generate()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    body = f'metadata\n    name = "{name}"\n    role = "{role}"\ncurve\n    public-key = "{kp.public}"\n'
    _write_0600(pub, _BANNER.format(kind="Public", what=role, when=when) + "\n" + body)
    _write_0600(
        sec,
        _BANNER.format(kind="**Secret**", what=role, when=when)
        + "#   DO NOT SHARE THIS FILE. Share only the .key file next to it.\n\n"
        + body
        + f'    secret-key = "{kp.secret}"\n',
    )
    return pub, sec


_LINE = re.compile(r'^\s*(public-key|secret-key)\s*=\s*"?([^"\s]+)"?\s*$')


def _read(path: Path | str) -> KeyPair:
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read key file {p}: {e}") from e
    found: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _LINE.match(line)
        if m:
            kind, value = m.groups()
            try:
                raw = z85_decode(value)
            except ValueError as e:
                raise ConfigError(f"{p}:{lineno}: {kind} is not valid Z85: {e}") from e
            if len(raw) != 32:
                raise ConfigError(f"{p}:{lineno}: {kind} must be 32 bytes (40 Z85 characters), got {len(raw)}")
            found[kind] = value
    if "public-key" not in found:
        raise ConfigError(f"{p}: no public-key line; is this a ZeroMQ CURVE certificate?")
    return KeyPair(public=found["public-key"], secret=found.get("secret-key"))


def load_public(path: Path | str) -> str:
    """The Z85 public key in a certificate file (public or secret)."""
    return _read(path).public


def load_keypair(path: Path | str) -> KeyPair:
    """Both keys from a ``.key_secret`` file; checks mode 0600 and that they belong together."""
    p = Path(path)
    kp = _read(p)
    if kp.secret is None:
        raise ConfigError(f"{p}: no secret-key line; pass the .key_secret file, not the public .key")
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"{p}: secret key file has mode {mode:o}; run chmod 600 {p}")
    sk = X25519PrivateKey.from_private_bytes(z85_decode(kp.secret))
    if z85_encode(sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)) != kp.public:
        raise ConfigError(f"{p}: public-key does not match secret-key")
    return kp
