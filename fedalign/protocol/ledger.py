"""The append-only JSON-lines ledger of privacy charges and rounds, shared by silo and aggregator.

Each line is one JSON object, written canonically (sorted keys, no spaces)::

    {"v", "seq", "time", "kind", ...fields, "prev", "sig"?}

``prev`` is the SHA-256 of the previous line's bytes (``""`` for the first), so an edited,
reordered or deleted line breaks the chain at the line after it. A ledger opened with the
node's Ed25519 identity (``Ledger(path, identity=...)``) also signs every entry: ``sig`` is
the signature over the line's bytes without ``sig``, so editing the *newest* entry (which no
later ``prev`` covers) is detected too.

What a hash chain cannot show on its own is that the newest entries were cut off: a prefix of
a valid ledger is a valid ledger. :meth:`Ledger.head` returns the signed head (index, digest,
signature) of the last entry; a peer keeps it (``Ledger.record_witness`` writes it into the
peer's own ledger), and :func:`verify` with ``witnessed_heads=`` then fails when the ledger no
longer reaches a head someone witnessed, or holds another entry at that index.

Crash safety: an append is one ``write`` of one complete line on an ``O_APPEND`` descriptor
followed by ``fsync``, so a crash can at worst leave a torn last line without its newline.
Such a line was never committed. Opening the ledger for append repairs it: a tail that is a
complete, chain-continuing entry that only lost its newline is *kept* (the newline is
restored); anything else after the last newline is cut off, saved beside the ledger as
``<name>.torn-<offset>`` and reported (a warning and :attr:`Ledger.repairs`). A repair never
removes a byte before the last newline, that is, never a committed entry.

Verification errors are :class:`LedgerError` (a :class:`~fedalign.protocol.errors.CheckpointError`) and
name the first bad entry: its index, its line in the file, and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from fedalign.protocol.errors import CheckpointError

__all__ = [
    "LEDGER_VERSION",
    "LedgerEntry",
    "LedgerHead",
    "LedgerError",
    "LedgerRepair",
    "Ledger",
    "read_ledger",
    "verify",
    "verify_head",
    "entry_signature_ok",
    "witnessed_heads",
]

log = logging.getLogger("fedalign.ledger")

LEDGER_VERSION = 2  # 2: optional "sig"; version-1 lines (no signatures) still read and verify
_VERSIONS = (1, 2)
_RESERVED = frozenset({"v", "seq", "time", "kind", "prev", "sig"})
_ENTRY_CONTEXT = "fedalign/ledger/entry/v2"
_HEAD_CONTEXT = "fedalign/ledger/head/v2"
WITNESS_KIND = "witnessed_head"


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


@dataclass(frozen=True)
class LedgerRepair:
    """What opening a ledger for append repaired at its tail."""

    offset: int  # byte offset of the torn tail (the end of the last committed line)
    dropped_bytes: int  # bytes cut off (0 when only a lost newline was restored)
    restored_newline: bool  # the tail was a complete entry; it was kept
    saved_to: Path | None  # where the cut-off bytes were saved


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


def verify_head(head: LedgerHead, public_key: bytes) -> None:
    """Raise LedgerError unless ``head`` is signed by ``public_key`` (the ledger owner's identity)."""
    if not head.signature or not _signature_ok(public_key, head.signature, _HEAD_CONTEXT, head.index, head.digest):
        raise LedgerError(f"ledger head {head.index} is not signed by the ledger's owner", index=head.index)


def verify(
    path: str | os.PathLike,
    *,
    public_key: bytes | None = None,
    witnessed_heads: Iterable[LedgerHead] = (),
) -> int:
    """Check the whole ledger; return the entry count or raise :class:`LedgerError`.

    Checks, in file order, that every line is canonical JSON of a known version, that
    sequence numbers count from 0 and ``prev`` chains each line to the one before it, and,
    when ``public_key`` (the owner's 32-byte Ed25519 key) is given, that *every* entry carries
    a valid signature. Then every head in ``witnessed_heads`` must be reached: the ledger has
    an entry at the head's index whose digest is the head's (and, with ``public_key``, the
    head is signed by the owner). A ledger cut below a witnessed head, or rewritten from there
    on, fails. The error names the first bad entry (index and file line).
    """
    p = Path(path)
    lines = _committed_lines(p)
    prev = ""
    digests: list[str] = []
    for i, raw in enumerate(lines):
        n = i + 1
        where = f"{p}:{n}: entry {i}"
        obj = _decode(p, n, raw)
        entry = _entry(p, n, raw, obj)
        if obj.get("v", 1) not in _VERSIONS:
            raise LedgerError(f"{where}: ledger version {obj.get('v')!r}, expected one of {_VERSIONS}", index=i, line=n)
        if entry.seq != i:
            raise LedgerError(f"{p}:{n}: ledger chain broken at entry {i}: sequence number {entry.seq}, expected {i} "
                              "(entries deleted, reordered or inserted)", index=i, line=n)
        if obj["prev"] != prev:
            raise LedgerError(f"{p}:{n}: ledger chain broken at entry {i}: prev does not match the hash of entry {i - 1} "
                              "(that entry was edited, or entries were deleted or reordered)", index=i, line=n)
        try:
            canonical = _canonical(obj)
        except ValueError:
            canonical = b""
        if obj.get("v", 1) >= 2 and canonical != raw:
            raise LedgerError(f"{where}: line is not in canonical form (edited by hand?)", index=i, line=n)
        if public_key is not None:
            sig = obj.get("sig")
            body = _canonical({k: v for k, v in obj.items() if k != "sig"})
            if not isinstance(sig, str) or not _is_hex(sig) or not _signature_ok(
                public_key, bytes.fromhex(sig), _ENTRY_CONTEXT, body
            ):
                what = "is not signed" if sig is None else "has a signature that does not match its content"
                raise LedgerError(f"{where}: entry {what} (edited, or written without the owner's identity)",
                                  index=i, line=n)
        prev = entry.digest
        digests.append(prev)
    for head in sorted(witnessed_heads, key=lambda h: h.index):
        if public_key is not None:
            verify_head(head, public_key)
        if head.index < 0:
            continue
        if head.index >= len(digests):
            raise LedgerError(
                f"{p}: ledger ends at entry {len(digests) - 1} but entry {head.index} was witnessed: "
                f"the newest {head.index + 1 - len(digests)} entries were removed (truncated)",
                index=len(digests), line=len(digests) + 1,
            )
        if digests[head.index] != head.digest:
            raise LedgerError(
                f"{p}:{head.index + 1}: entry {head.index}: differs from the witnessed head "
                "(rewritten or replaced after it was witnessed)", index=head.index, line=head.index + 1,
            )
    return len(lines)


def entry_signature_ok(entry: Mapping[str, Any], public_key: bytes) -> bool:
    """Whether one decoded ledger entry carries its owner's valid Ed25519 signature (``sig``)."""
    sig = entry.get("sig")
    if not isinstance(sig, str) or not _is_hex(sig):
        return False
    return _signature_ok(public_key, bytes.fromhex(sig), _ENTRY_CONTEXT,
                         _canonical({k: v for k, v in entry.items() if k != "sig"}))


def witnessed_heads(path: str | os.PathLike, node: str) -> list[LedgerHead]:
    """The heads of ``node``'s ledger that the ledger at ``path`` recorded as witnessed."""
    out = []
    for e in read_ledger(path):
        if e.kind == WITNESS_KIND and e.fields.get("node") == node:
            out.append(LedgerHead.from_wire({k: e.fields.get(k) for k in ("index", "digest", "signature")}))
    return out


class Ledger:
    """Appends entries to one ledger file; safe against crashes, not against concurrent writers.

    ``identity`` (a :class:`crypto.identity.IdentityKey`) signs every entry and the head;
    without it entries are hash-chained only. The API is unchanged for callers:
    ``Ledger(path).append(kind, fields, now=...)``.
    """

    def __init__(self, path: str | os.PathLike, *, identity: Any = None):
        self.path = Path(path)
        self.identity = identity
        self._seq: int | None = None
        self._prev = ""
        self.repairs: list[LedgerRepair] = []

    def _load_tail(self) -> None:
        data = _read(self.path)
        lines, tail, end = _split(data)
        if tail:
            self.repairs.append(self._repair(lines, tail, end))
            if self.repairs[-1].restored_newline:
                lines.append(tail)
        self._seq = len(lines)
        self._prev = hashlib.sha256(lines[-1]).hexdigest() if lines else ""
        if lines:
            _parse(self.path, len(lines), lines[-1])  # the entry the next one chains to must be sound

    def _repair(self, lines: list[bytes], tail: bytes, end: int) -> LedgerRepair:
        """Fix a tail after the last newline without touching any byte before it."""
        try:
            with open(self.path, "r+b") as f:
                if _complete_tail(lines, tail):  # a whole entry that lost its newline: keep it
                    f.seek(end + len(tail))
                    f.write(b"\n")
                    repair = LedgerRepair(end, 0, True, None)
                else:  # a torn write: save it for the record, then cut exactly those bytes
                    saved = self.path.with_name(f"{self.path.name}.torn-{end}")
                    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as s:
                        s.write(tail)
                        s.flush()
                        os.fsync(s.fileno())
                    f.truncate(end)
                    repair = LedgerRepair(end, len(tail), False, saved)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot repair the ledger's torn tail: {exc}") from exc
        if repair.restored_newline:
            log.warning("%s: last entry (byte %d) had lost its newline; restored it, nothing removed",
                        self.path, end)
        else:
            log.warning("%s: removed a torn, never-committed last line of %d bytes at byte %d (saved to %s); "
                        "every committed entry is intact", self.path, len(tail), end, repair.saved_to)
        return repair

    def append(self, kind: str, fields: Mapping[str, Any], *, now: float) -> LedgerEntry:
        """Commit one entry (durably, before returning). ``now`` is the caller's clock."""
        bad = _RESERVED & fields.keys()
        if bad:
            raise ValueError(f"ledger fields may not use reserved names {sorted(bad)}")
        if self._seq is None:
            self._load_tail()
        assert self._seq is not None
        obj = {"v": LEDGER_VERSION, "seq": self._seq, "time": float(now), "kind": kind, **fields,
               "prev": self._prev}
        try:
            raw = _canonical(obj)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ledger entry {kind!r} is not plain JSON: {exc}") from exc
        if self.identity is not None:
            obj["sig"] = _sign(self.identity, _ENTRY_CONTEXT, raw).hex()
            raw = _canonical(obj)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(raw + b"\n")
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot append to ledger: {exc}") from exc
        entry = LedgerEntry(self._seq, float(now), kind, dict(fields), hashlib.sha256(raw).hexdigest(),
                            self.identity is not None)
        self._seq += 1
        self._prev = entry.digest
        return entry

    def head(self) -> LedgerHead:
        """The signed head of the ledger (its newest entry), for a peer to witness."""
        if self._seq is None:
            self._load_tail()
        assert self._seq is not None
        index, digest = self._seq - 1, self._prev
        sig = _sign(self.identity, _HEAD_CONTEXT, index, digest) if self.identity is not None else b""
        return LedgerHead(index, digest, sig)

    def record_witness(self, node: str, head: LedgerHead, *, now: float) -> LedgerEntry:
        """Record in this ledger that ``node``'s ledger had ``head`` (see :func:`witnessed_heads`)."""
        if not isinstance(node, str) or not node:
            raise ValueError("record_witness: node must be a non-empty str")
        return self.append(WITNESS_KIND, {"node": node, **head.to_wire()}, now=now)

    def entries(self) -> list[LedgerEntry]:
        """Every committed entry (re-read from the file)."""
        return read_ledger(self.path)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(read_ledger(self.path))
