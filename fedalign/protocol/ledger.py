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

Verification: :func:`verify_ledger` is the one verifier (the library, ``audit verify``, ``show``
and ``report`` all call it). It returns a :class:`VerifyResult`: what was checked (hash chain;
signatures, and against which key, or plainly that they were not; witnessed heads; the tail), the
verdict (:data:`INTACT`, :data:`TORN_TAIL` or :data:`BROKEN`) and the first bad entry with its
index, line and reason. :func:`verify` is the same check, raising: errors are :class:`LedgerError`
(a :class:`~fedalign.protocol.errors.CheckpointError`, exit code 11). A torn last line is neither
intact nor forged: the committed entries before it are verified, and the verdict is a torn tail,
refused unless the caller passes ``allow_torn_tail`` (docs/compliance.md, "Torn tails").
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
from fedalign.protocol.files import open_new_fd, private_mkdir

__all__ = [
    "LEDGER_VERSION",
    "LedgerEntry",
    "LedgerHead",
    "LedgerError",
    "LedgerRepair",
    "Ledger",
    "read_ledger",
    "verify",
    "verify_ledger",
    "verify_head",
    "VerifyResult",
    "Check",
    "TornTail",
    "LedgerTornTail",
    "INTACT",
    "TORN_TAIL",
    "BROKEN",
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


# ---------------------------------------------------------------------------- the one verifier
INTACT, TORN_TAIL, BROKEN = "intact", "torn_tail", "broken"
_CHAIN, _SIGS, _HEADS, _TAIL, _READ = "hash chain", "signatures", "witnessed heads", "tail", "read"


@dataclass(frozen=True)
class TornTail:
    """Bytes after the last newline that are not a complete JSON line: what a crash in the middle
    of an append leaves (or a file cut mid-line). Never committed, never counted as an entry."""

    offset: int  # byte offset where they start (the end of the last complete line)
    length: int  # how many bytes
    after: int  # index of the last committed entry before them (-1: none)


@dataclass(frozen=True)
class Check:
    """One check of a verification and what came of it, as ``show``/``report`` list them."""

    name: str  # "hash chain", "signatures", "witnessed heads", "tail"
    outcome: str  # "ok", "FAILED", "NOT RUN", "TORN", "TORN (allowed)"
    detail: str

    @property
    def ran(self) -> bool:
        return self.outcome != "NOT RUN"


@dataclass
class VerifyResult:
    """What :func:`verify_ledger` found: one type for the library, ``audit verify``, ``show`` and ``report``.

    ``status`` is :data:`INTACT` (every check that ran passed), :data:`TORN_TAIL` (every committed
    entry passed, then an incomplete last line: a crash mid-write or a cut mid-line) or
    :data:`BROKEN` (``first_bad`` names the first entry that failed, ``reason`` says why,
    ``failed_check`` which check failed). ``ok`` is True for intact, and for a torn tail only
    when the caller allowed it (``allow_torn_tail``).
    """

    path: str
    status: str = BROKEN
    entries: int = 0  # committed entries that verified (before first_bad when broken)
    lines: int = 0  # committed lines read (complete JSON lines)
    first_bad: int | None = None  # index (= 0-based line) of the first bad entry
    first_bad_line: int | None = None  # its 1-based line in the file
    reason: str = ""
    message: str = ""  # the same finding as ``file:line: ...`` (what LedgerError carries)
    failed_check: str | None = None
    head: LedgerHead | None = None  # (index, digest) of the last committed entry, for someone to witness
    signed_entries: int = 0  # entries carrying a ``sig`` field (checked or not)
    public_key: str | None = None  # hex Ed25519 key the signatures were checked against (None: not checked)
    key_source: str | None = None  # where that key came from (``--public-key``, the roster, ...)
    heads_given: int = 0  # witnessed/recorded heads given (index >= 0)
    witnessed: int = 0  # of them, matched
    witnessed_signed: int = 0  # of the matched, signature-checked against the owner's key
    torn_tail: TornTail | None = None
    allow_torn_tail: bool = False
    newline_restored: bool = False  # the last entry was complete but had lost its newline: counted
    key_hint: str = "pass --public-key or --config"  # what to do when signatures were present but not checked

    @property
    def ok(self) -> bool:
        return self.status == INTACT or (self.status == TORN_TAIL and self.allow_torn_tail)

    @property
    def signatures_checked(self) -> bool:
        return self.public_key is not None

    # -- wording ---------------------------------------------------------------------------------
    def signature_status(self) -> str:
        """The signatures part of :meth:`line`: checked against which key, or plainly not checked."""
        if self.public_key is not None:
            src = f" ({self.key_source})" if self.key_source else ""
            if self.failed_check == _SIGS:
                return f"REFUSED against ed25519:{self.public_key}{src}"
            return f"checked: every entry signed by ed25519:{self.public_key}{src}"
        if self.signed_entries == 0:
            return "none: the entries are unsigned (hash chain only)"
        which = "every entry" if self.signed_entries == self.lines else f"{self.signed_entries} of {self.lines} entries"
        return f"present on {which} but NOT checked: {self.key_hint}"

    def _heads_status(self) -> str:
        if not self.heads_given:
            return "no witnessed head given (deleting the newest entries is not detectable without one)"
        sig = (f", {self.witnessed_signed} of them signed by the owner" if self.witnessed_signed
               else "")
        return f"{self.witnessed} witnessed head(s) matched{sig}"

    def line(self) -> str:
        """One line: the verdict, as ``audit verify`` prints it."""
        if self.status == BROKEN:
            return f"{self.path}: BROKEN at entry {self.first_bad} (line {self.first_bad_line}): {self.reason}"
        head = f"; head {self.head.index}:{self.head.digest}" if self.head else ""
        tail = f"; {self._heads_status()}; signatures {self.signature_status()}"
        if self.status == INTACT:
            nl = "; the last entry had lost its newline (counted: it is complete)" if self.newline_restored else ""
            return f"{self.path}: OK, {self.entries} entries, hash chain intact{head}{nl}{tail}"
        assert self.torn_tail is not None
        verdict = "TORN TAIL (accepted with --allow-torn-tail)" if self.allow_torn_tail else "TORN TAIL"
        hint = "" if self.allow_torn_tail else "; not intact: pass --allow-torn-tail to accept a crash-torn last line"
        return (f"{self.path}: {verdict} at entry {self.first_bad} (line {self.first_bad_line}): {self.reason}; "
                f"the {self.entries} committed entries before it verified{head}{tail}{hint}")

    def checks(self) -> list[Check]:
        """Which checks ran and which did not, each with its outcome (the top of ``show``/``report``)."""
        fc, broken = self.failed_check, self.status == BROKEN
        out: list[Check] = []
        if fc == _READ:
            return [Check(_READ, "FAILED", self.reason)]
        if fc == _CHAIN:
            out.append(Check(_CHAIN, "FAILED", f"at entry {self.first_bad}: {self.reason}"))
        else:
            nl = " (the last entry had lost its newline; complete, counted)" if self.newline_restored else ""
            out.append(Check(_CHAIN, "ok", f"{self.entries if broken else self.lines} entries chained, "
                                           f"sequence numbers and canonical form checked{nl}"))
        src = f" ({self.key_source})" if self.key_source else ""
        if self.public_key is None:
            out.append(Check(_SIGS, "NOT RUN", self.signature_status()))
        elif fc == _SIGS:
            out.append(Check(_SIGS, "FAILED", f"against ed25519:{self.public_key}{src}: entry {self.first_bad}: "
                                             f"{self.reason}"))
        elif fc == _CHAIN:
            out.append(Check(_SIGS, "NOT RUN", f"stopped where the hash chain broke (key ed25519:{self.public_key}"
                                               f"{src})"))
        else:
            out.append(Check(_SIGS, "ok", f"every entry signed by ed25519:{self.public_key}{src}"))
        if fc == _HEADS:
            out.append(Check(_HEADS, "FAILED", self.reason))
        elif broken:
            out.append(Check(_HEADS, "NOT RUN", "the ledger broke before they were compared"))
        elif not self.heads_given:
            out.append(Check(_HEADS, "NOT RUN", "none given: deleting the newest entries (at a line boundary) is "
                                                "not detectable without one (--head, --witness-ledger)"))
        else:
            sig = (f"; {self.witnessed_signed} signature-checked against the owner's key" if self.public_key
                   else "; their signatures NOT checked (no key)")
            out.append(Check(_HEADS, "ok", f"{self.witnessed} head(s) present with the witnessed digest{sig}"))
        if broken:
            out.append(Check(_TAIL, "NOT RUN", "the ledger broke before its end"))
        elif self.torn_tail is not None:
            out.append(Check(_TAIL, "TORN (allowed)" if self.allow_torn_tail else "TORN",
                             f"after entry {self.torn_tail.after}: {self.reason}"))
        else:
            out.append(Check(_TAIL, "ok", "the file ends with a complete entry"))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain fields for the JSON report."""
        return {
            "status": self.status, "ok": self.ok, "line": self.line(), "entries": self.entries,
            "first_bad": self.first_bad, "reason": self.reason or None, "failed_check": self.failed_check,
            "head": None if self.head is None else f"{self.head.index}:{self.head.digest}",
            "signed_entries": self.signed_entries, "signatures_checked": self.signatures_checked,
            "public_key": self.public_key, "key_source": self.key_source,
            "heads_given": self.heads_given, "witnessed": self.witnessed, "witnessed_signed": self.witnessed_signed,
            "torn_tail": None if self.torn_tail is None else {"offset": self.torn_tail.offset,
                                                              "bytes": self.torn_tail.length,
                                                              "after_entry": self.torn_tail.after},
            "allow_torn_tail": self.allow_torn_tail,
            "checks": [{"check": c.name, "outcome": c.outcome, "detail": c.detail} for c in self.checks()],
        }

    def raise_for_status(self) -> None:
        """Raise :class:`LedgerError` (:class:`LedgerTornTail` for an unaccepted torn tail) unless ``ok``."""
        if self.ok:
            return
        cls = LedgerTornTail if self.status == TORN_TAIL else LedgerError
        raise cls(self.message or self.line(), index=self.first_bad, line=self.first_bad_line)


class LedgerTornTail(LedgerError):
    """The committed entries verified, but an incomplete last line follows (a crash mid-write, or a
    cut mid-line); refused unless the caller accepts torn tails."""


def _as_head(h: LedgerHead | tuple[int, str]) -> LedgerHead:
    return h if isinstance(h, LedgerHead) else LedgerHead(int(h[0]), str(h[1]), b"")


def verify_ledger(
    path: str | os.PathLike,
    *,
    public_key: bytes | None = None,
    key_source: str | None = None,
    witnessed_heads: Iterable[LedgerHead | tuple[int, str]] = (),
    recorded_heads: Iterable[LedgerHead | tuple[int, str]] = (),
    allow_torn_tail: bool = False,
) -> VerifyResult:
    """Check the whole ledger and say what was checked; never raises for what it finds.

    Per line, in file order: a JSON object with seq/time/kind/prev, a known version, plain
    types, finite numbers, ``seq`` equal to its position, ``prev`` the SHA-256 of the line before
    (``""`` for the first), canonical bytes (version 2), and, when ``public_key`` (the owner's
    32-byte Ed25519 key) is given, a valid signature on *every* entry. A break in the chain at
    entry i names entry i-1 (whose hash no longer matches): the edited entry, in all but the
    case where entry i's ``prev`` was edited instead.

    Then every head must be reached (an entry at its index with its digest): ``witnessed_heads``
    are heads a peer recorded (with ``public_key``, each must also carry the owner's signature),
    ``recorded_heads`` heads the auditor recorded themselves (taken as given).

    The tail: a last line without its newline that is a complete JSON line is an entry like any
    other (checked as such); bytes after the last newline that are not complete JSON are a
    *torn tail*: status :data:`TORN_TAIL`, not intact and not broken, ``ok`` only with
    ``allow_torn_tail``.
    """
    p = Path(path)
    res = VerifyResult(str(p), public_key=public_key.hex() if public_key is not None else None,
                       key_source=key_source if public_key is not None else None, allow_torn_tail=allow_torn_tail)

    def broken(check: str, index: int, reason: str, message: str | None = None) -> VerifyResult:
        res.status, res.failed_check, res.first_bad, res.first_bad_line = BROKEN, check, index, index + 1
        res.reason, res.message = reason, message or f"{p}:{index + 1}: entry {index}: {reason}"
        res.entries = min(res.entries, index)
        return res

    try:
        data = p.read_bytes()
    except OSError as exc:
        return broken(_READ, 0, f"cannot read the ledger: {exc.strerror or exc}", f"{p}: cannot read ledger: {exc}")
    lines, tail, end = _split(data)
    if tail:
        try:
            json.loads(tail)
        except (ValueError, UnicodeDecodeError):
            res.torn_tail = TornTail(end, len(tail), len(lines) - 1)
        else:  # a whole line that lost its newline: an entry like any other (a forged one fails below)
            lines.append(tail)
            res.newline_restored = True
    res.lines = len(lines)
    prev = ""
    digests: list[str] = []
    for i, raw in enumerate(lines):
        n = i + 1
        res.entries = i
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return broken(_CHAIN, i, "not a JSON line (edited or damaged)",
                          f"{p}:{n}: entry {i}: ledger line is not JSON ({exc})")
        if not isinstance(obj, dict) or not {"seq", "time", "kind", "prev"} <= obj.keys():
            return broken(_CHAIN, i, "lacks seq/time/kind/prev",
                          f"{p}:{n}: entry {i}: ledger line lacks seq/time/kind/prev")
        if obj.get("v", 1) not in _VERSIONS:
            return broken(_CHAIN, i, f"ledger version {obj.get('v')!r}, expected one of {_VERSIONS}")
        seq, t = obj["seq"], obj["time"]
        if type(seq) is not int or not isinstance(t, (int, float)) or isinstance(t, bool) \
                or not isinstance(obj["kind"], str):
            return broken(_CHAIN, i, "seq must be an int, time a number, kind a str")
        try:
            canonical = _canonical(obj)
        except ValueError:
            return broken(_CHAIN, i, "holds a number JSON cannot carry (infinite or NaN): edited or damaged")
        if seq != i:
            return broken(_CHAIN, i, f"sequence number {seq!r}, expected {i}: entries deleted, reordered or inserted",
                          f"{p}:{n}: ledger chain broken at entry {i}: sequence number {seq}, expected {i} "
                          "(entries deleted, reordered or inserted)")
        if obj["prev"] != prev:
            if i == 0:
                return broken(_CHAIN, 0, "the first entry's prev is not empty (edited)",
                              f"{p}:1: ledger chain broken at entry 0: its prev is not empty (edited)")
            return broken(_CHAIN, i - 1, f"its SHA-256 no longer matches what entry {i} recorded: entry {i - 1} was "
                                         f"edited (or entry {i}'s prev field)",
                          f"{p}:{n}: ledger chain broken at entry {i}: prev does not match the hash of entry {i - 1} "
                          f"(entry {i - 1} was edited, or entry {i}'s prev, or entries were deleted or reordered)")
        if obj.get("v", 1) >= 2 and canonical != raw:
            return broken(_CHAIN, i, "line is not in canonical form (edited by hand?)")
        sig = obj.get("sig")
        if sig is not None:
            res.signed_entries += 1
        if public_key is not None:
            body = _canonical({k: v for k, v in obj.items() if k != "sig"})
            if not isinstance(sig, str) or not _is_hex(sig) or not _signature_ok(
                public_key, bytes.fromhex(sig), _ENTRY_CONTEXT, body
            ):
                what = ("entry is not signed (written without the owner's identity, or the signature was removed)"
                        if sig is None else "entry has a signature that does not match its content under this key "
                        "(edited, or signed with another key)")
                return broken(_SIGS, i, what)
        prev = hashlib.sha256(raw).hexdigest()
        digests.append(prev)
    res.entries = len(digests)
    res.head = LedgerHead(len(digests) - 1, digests[-1]) if digests else None
    heads = [(_as_head(h), True) for h in witnessed_heads] + [(_as_head(h), False) for h in recorded_heads]
    for head, peer in sorted(heads, key=lambda x: x[0].index):
        if peer and public_key is not None:
            if not head.signature or not _signature_ok(public_key, head.signature, _HEAD_CONTEXT, head.index,
                                                       head.digest):
                return broken(_HEADS, max(head.index, 0), f"the witnessed head of entry {head.index} is not signed by "
                              "the ledger's owner (a forged head, or the peer's ledger was edited)",
                              f"{p}: ledger head {head.index} is not signed by the ledger's owner")
        if head.index < 0:
            continue
        res.heads_given += 1
        if head.index >= len(digests):
            k = head.index + 1 - len(digests)
            return broken(_HEADS, len(digests), f"a witnessed head says entry {head.index} exists, the ledger ends at "
                          f"entry {len(digests) - 1}: the newest {k} entries were deleted (truncated)",
                          f"{p}: ledger ends at entry {len(digests) - 1} but entry {head.index} was witnessed: "
                          f"the newest {k} entries were deleted (truncated)")
        if digests[head.index] != head.digest:
            return broken(_HEADS, head.index, "differs from the witnessed head of that entry (rewritten or replaced "
                          "after it was witnessed)",
                          f"{p}:{head.index + 1}: entry {head.index}: differs from the witnessed head "
                          "(rewritten or replaced after it was witnessed)")
        res.witnessed += 1
        if peer and public_key is not None:
            res.witnessed_signed += 1
    if res.torn_tail is not None:
        res.status, res.failed_check = TORN_TAIL, _TAIL
        res.first_bad, res.first_bad_line = len(lines), len(lines) + 1
        res.reason = (f"incomplete last line ({res.torn_tail.length} bytes at byte {res.torn_tail.offset}, not a "
                      "complete entry): a crash mid-write, or the file was truncated mid-line; never committed, "
                      "not counted")
        res.message = res.line()
        return res
    res.status = INTACT
    return res


def verify(
    path: str | os.PathLike,
    *,
    public_key: bytes | None = None,
    witnessed_heads: Iterable[LedgerHead] = (),
    recorded_heads: Iterable[LedgerHead | tuple[int, str]] = (),
    allow_torn_tail: bool = False,
) -> int:
    """:func:`verify_ledger`, raising: return the entry count or raise :class:`LedgerError`.

    The error names the first bad entry (index and file line); a torn last line raises
    :class:`LedgerTornTail` unless ``allow_torn_tail`` (then the committed entries are counted).
    """
    res = verify_ledger(path, public_key=public_key, witnessed_heads=witnessed_heads,
                        recorded_heads=recorded_heads, allow_torn_tail=allow_torn_tail)
    res.raise_for_status()
    return res.entries


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
        try:
            private_mkdir(self.path.parent)
            fd = open_new_fd(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
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
