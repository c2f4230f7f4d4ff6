"""Canonical, injective byte encoding of protocol fields, for signatures, HKDF info and AAD.

Each part is length-prefixed so no two different tuples encode to the same bytes.
"""

from __future__ import annotations

import struct

__all__ = ["canonical"]


def canonical(*parts: object) -> bytes:
    """Encode ``parts`` (bytes, str, int, bool, or tuples of those) injectively."""
    out = bytearray()
    for p in parts:
        if isinstance(p, bool):
            tag, body = b"b", b"\x01" if p else b"\x00"
        elif isinstance(p, int):
            tag, body = b"i", str(p).encode()
        elif isinstance(p, str):
            tag, body = b"s", p.encode("utf-8")
        elif isinstance(p, (bytes, bytearray, memoryview)):
            tag, body = b"y", bytes(p)
        elif isinstance(p, tuple):
            tag, body = b"t", canonical(*p)
        else:
            raise TypeError(f"canonical(): cannot encode {type(p).__name__}")
        out += tag + struct.pack(">Q", len(body)) + body
    return bytes(out)
