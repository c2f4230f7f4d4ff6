"""The ledger's line format: one canonical JSON object per line, hash-chained and optionally signed.

Each line is one JSON object, written canonically (sorted keys, no spaces)::

    {"v", "seq", "time", "kind", ...fields, "prev", "sig"?}

``prev`` is the SHA-256 of the previous line's bytes (``""`` for the first), so an edited,
reordered or deleted line breaks the chain at the line after it. A ledger opened with the
node's Ed25519 identity (:class:`fedalign.compliance.ledger.Ledger` with ``identity=``) also signs
every entry: ``sig`` is the signature over the line's bytes without ``sig``, so editing the
*newest* entry (which no later ``prev`` covers) is detected too.

This module holds what every reader and writer of a ledger agrees on: the entry and head types,
canonical bytes, hashing, the signature contexts, and reading the committed lines of a file (a
last line that only lost its newline counts; a torn write does not). Writing is
:mod:`fedalign.compliance.ledger`, the witnessed heads and closing receipts
:mod:`fedalign.compliance.witness`, verification :mod:`fedalign.compliance.verifier`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fedalign.protocol.errors import CheckpointError

__all__ = ["LEDGER_VERSION", "LedgerEntry", "LedgerHead", "LedgerError", "read_ledger", "entry_signature_ok"]

LEDGER_VERSION = 2  # 2: optional "sig"; version-1 lines (no signatures) still read and verify
_VERSIONS = (1, 2)
_RESERVED = frozenset({"v", "seq", "time", "kind", "prev", "sig"})
_ENTRY_CONTEXT = "fedalign/ledger/entry/v2"
_HEAD_CONTEXT = "fedalign/ledger/head/v2"
_RECEIPT_CONTEXT = "fedalign/ledger/receipt/v1"


class LedgerError(CheckpointError):
    """A ledger failed verification; ``index`` and ``line`` name the first bad entry (or None)."""

    def __init__(self, message: str, *, index: int | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.line = line


@dataclass(frozen=True)
class LedgerEntry:
    """One committed line: its sequence number, timestamp, kind and the kind's fields."""

    seq: int
    time: float
    kind: str
    fields: Mapping[str, Any]
    digest: str  # SHA-256 of this line's bytes, what the next line's ``prev`` holds
    signed: bool = False


@dataclass(frozen=True)
class LedgerHead:
    """The newest entry of a ledger as its owner vouches for it: what a peer witnesses.

    ``index`` is the entry's sequence number (-1 for an empty ledger, digest ``""``),
    ``digest`` the SHA-256 of its line, ``signature`` the owner's Ed25519 signature over both
    (``b""`` when the ledger has no identity: such a head still detects truncation, but a
    peer cannot prove who issued it).
    """

    index: int
    digest: str
    signature: bytes = b""

    def to_wire(self) -> dict[str, Any]:
        """Plain fields for a message or a JSON file (signature as hex)."""
        return {"index": self.index, "digest": self.digest, "signature": self.signature.hex()}

    @classmethod
    def from_wire(cls, obj: Any) -> "LedgerHead":
        """The head in ``obj`` (what :meth:`to_wire` made); CheckpointError names what is wrong."""
        if not isinstance(obj, Mapping) or set(obj) != {"index", "digest", "signature"}:
            raise CheckpointError("ledger head must be a map with index, digest and signature")
        index, digest, sig = obj["index"], obj["digest"], obj["signature"]
        if type(index) is not int or index < -1:
            raise CheckpointError(f"ledger head index must be an int >= -1, got {type(index).__name__}")
        if not isinstance(digest, str) or not (len(digest) == 64 and _is_hex(digest) or (index == -1 and digest == "")):
            raise CheckpointError("ledger head digest must be 64 hex characters")
        if isinstance(sig, str):
            if not _is_hex(sig) or len(sig) not in (0, 128):
                raise CheckpointError("ledger head signature must be 64 bytes of hex, or empty")
            sig = bytes.fromhex(sig)
        if not isinstance(sig, bytes) or len(sig) not in (0, 64):
            raise CheckpointError("ledger head signature must be 64 bytes, or empty")
        return cls(index, digest, sig)



def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
    except ValueError:
        return False
    return True


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sign(identity: Any, context: str, *fields: object) -> bytes:
    from fedalign.crypto.hazmat.signing import sign

    return sign(identity.private_key, context, *fields)


def _signature_ok(public_key: bytes, signature: bytes, context: str, *fields: object) -> bool:
    from fedalign.crypto.errors import CryptoError
    from fedalign.crypto.hazmat.signing import verify as verify_sig

    try:
        verify_sig(public_key, signature, context, *fields)
    except CryptoError:
        return False
    return True


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ledger: {exc}") from exc


def _split(data: bytes) -> tuple[list[bytes], bytes, int]:
    """Complete lines (without newline), the bytes after the last newline, and where they start."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), data[end:], end


def _decode(path: Path, lineno: int, raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LedgerError(f"{path}:{lineno}: entry {lineno - 1}: ledger line is not JSON ({exc})",
                          index=lineno - 1, line=lineno) from exc
    if not isinstance(obj, dict) or not {"seq", "time", "kind", "prev"} <= obj.keys():
        raise LedgerError(f"{path}:{lineno}: entry {lineno - 1}: ledger line lacks seq/time/kind/prev",
                          index=lineno - 1, line=lineno)
    return obj


def _entry(path: Path, lineno: int, raw: bytes, obj: Mapping[str, Any]) -> LedgerEntry:
    seq, t, kind = obj["seq"], obj["time"], obj["kind"]
    if type(seq) is not int or not isinstance(t, (int, float)) or isinstance(t, bool) or not isinstance(kind, str):
        raise LedgerError(f"{path}:{lineno}: entry {lineno - 1}: seq must be an int, time a number, kind a str",
                          index=lineno - 1, line=lineno)
    fields = {k: v for k, v in obj.items() if k not in _RESERVED}
    return LedgerEntry(seq, float(t), kind, fields, hashlib.sha256(raw).hexdigest(), "sig" in obj)


def _parse(path: Path, lineno: int, raw: bytes) -> LedgerEntry:
    return _entry(path, lineno, raw, _decode(path, lineno, raw))


def _complete_tail(lines: list[bytes], tail: bytes) -> bool:
    """Whether ``tail`` (no newline) is a whole entry continuing the chain: committed, newline lost."""
    if not tail.strip():
        return False
    try:
        obj = json.loads(tail)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(obj, dict) or not {"seq", "time", "kind", "prev"} <= obj.keys():
        return False
    prev = hashlib.sha256(lines[-1]).hexdigest() if lines else ""
    return obj.get("seq") == len(lines) and obj.get("prev") == prev


def _committed_lines(path: Path) -> list[bytes]:
    lines, tail, _ = _split(_read(path))
    if _complete_tail(lines, tail):
        lines.append(tail)
    return lines


def read_ledger(path: str | os.PathLike) -> list[LedgerEntry]:
    """Every committed entry, in order; a malformed committed line raises CheckpointError.

    A last line without its newline counts when it is a whole entry that continues the chain
    (only the newline was lost); otherwise it is a torn write, never committed, and ignored.
    """
    p = Path(path)
    return [_parse(p, i + 1, raw) for i, raw in enumerate(_committed_lines(p))]



def entry_signature_ok(entry: Mapping[str, Any], public_key: bytes) -> bool:
    """Whether one decoded ledger entry carries its owner's valid Ed25519 signature (``sig``)."""
    sig = entry.get("sig")
    if not isinstance(sig, str) or not _is_hex(sig):
        return False
    try:
        body = _canonical({k: v for k, v in entry.items() if k != "sig"})
    except (TypeError, ValueError):  # a non-finite number: no signature can cover it
        return False
    return _signature_ok(public_key, bytes.fromhex(sig), _ENTRY_CONTEXT, body)

