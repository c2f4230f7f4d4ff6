"""Appending to a ledger: one durable line per entry, crash-safe, signed when the node has an identity.

The line format is :mod:`fedalign.compliance.entries`; :class:`Ledger` writes it and gives the
signed head a peer witnesses (:mod:`fedalign.compliance.witness`).

Crash safety: an append is one ``write`` of one complete line on an ``O_APPEND`` descriptor
followed by ``fsync``, so a crash can at worst leave a torn last line without its newline.
Such a line was never committed. Opening the ledger for append repairs it: a tail that is a
complete, chain-continuing entry that only lost its newline is *kept* (the newline is
restored); anything else after the last newline is cut off, saved beside the ledger as
``<name>.torn-<offset>`` and reported (a warning and :attr:`Ledger.repairs`). A repair never
removes a byte before the last newline, that is, never a committed entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from fedalign.compliance.entries import (_ENTRY_CONTEXT, _HEAD_CONTEXT, _RESERVED, LEDGER_VERSION, LedgerEntry,
                                         LedgerHead, _canonical, _complete_tail, _parse, _read, _sign, _split,
                                         read_ledger)
from fedalign.compliance.witness import FINAL_FIELD, RECEIPT_FIELD, WITNESS_KIND
from fedalign.protocol.errors import CheckpointError
from fedalign.protocol.files import open_new_fd, private_mkdir

__all__ = ["Ledger", "LedgerRepair"]

log = logging.getLogger("fedalign.ledger")


@dataclass(frozen=True)
class LedgerRepair:
    """What opening a ledger for append repaired at its tail."""

    offset: int  # byte offset of the torn tail (the end of the last committed line)
    dropped_bytes: int  # bytes cut off (0 when only a lost newline was restored)
    restored_newline: bool  # the tail was a complete entry; it was kept
    saved_to: Path | None  # where the cut-off bytes were saved



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

    def record_witness(self, node: str, head: LedgerHead, *, now: float, final: bool = False) -> LedgerEntry:
        """Record in this ledger that ``node``'s ledger had ``head`` (see :func:`witnessed_heads`);
        ``final``: its closing head, for which this node gives a receipt (:func:`final_heads`)."""
        if not isinstance(node, str) or not node:
            raise ValueError("record_witness: node must be a non-empty str")
        extra = {FINAL_FIELD: True} if final else {}
        return self.append(WITNESS_KIND, {"node": node, **head.to_wire(), **extra}, now=now)

    def record_receipt(self, node: str, owner: str, own: LedgerHead, receipt: bytes, peer: LedgerHead, *,
                       now: float) -> LedgerEntry:
        """The closing entry: ``node`` (the witness) gave ``owner`` (this ledger's owner) ``receipt``
        for this ledger's head ``own``, and its own ledger had ``peer``. Only an entry of this ledger
        at ``own.index`` with ``own.digest`` makes it verify."""
        return self.append(WITNESS_KIND, {"node": node, **peer.to_wire(), RECEIPT_FIELD: {
            "for": owner, "index": own.index, "digest": own.digest, "signature": receipt.hex()}}, now=now)

    def entries(self) -> list[LedgerEntry]:
        """Every committed entry (re-read from the file)."""
        return read_ledger(self.path)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(read_ledger(self.path))
