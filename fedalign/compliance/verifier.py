"""The one verifier of a ledger: what was checked, the verdict, and the first bad entry.

:func:`verify_ledger` is the one verifier (the library, ``audit verify``, ``show`` and ``report``
all call it). It returns a :class:`VerifyResult`: what was checked (hash chain; signatures, and
against which key, or plainly that they were not; witnessed heads; the tail), the verdict
(:data:`INTACT`, :data:`TORN_TAIL` or :data:`BROKEN`) and the first bad entry with its index,
line and reason. :func:`verify` is the same check, raising: errors are
:class:`~fedalign.compliance.entries.LedgerError` (a
:class:`~fedalign.protocol.errors.CheckpointError`, exit code 11). A torn last line is neither
intact nor forged: the committed entries before it are verified, and the verdict is a torn tail,
refused unless the caller passes ``allow_torn_tail`` (docs/compliance.md, "Torn tails").
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from fedalign.compliance.entries import (_ENTRY_CONTEXT, _HEAD_CONTEXT, _VERSIONS, LedgerError, LedgerHead,
                                         _canonical, _is_hex, _signature_ok, _split)
from fedalign.compliance.witness import RECEIPT_FIELD, WITNESS_KIND, receipt_ok

__all__ = ["verify", "verify_ledger", "VerifyResult", "Check", "TornTail", "LedgerTornTail", "LedgerUnwitnessedTail",
           "INTACT", "TORN_TAIL", "BROKEN", "UNWITNESSED"]

INTACT, TORN_TAIL, BROKEN, UNWITNESSED = "intact", "torn_tail", "broken", "unwitnessed_tail"
_CHAIN, _SIGS, _HEADS, _TAIL, _READ = "hash chain", "signatures", "witnessed heads", "tail", "read"
_WITNESSED_TAIL = "witnessed tail"


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
    # the witnessed tail: every entry of a federated run must be covered by a head a peer witnessed
    # (or by the closing receipt); ``unwitnessed`` is (first, last) index of those that are not
    covered: int = -1  # the newest entry a peer witnessed (its head, or a receipt); -1: none
    receipts: int = 0  # closing receipts found in this ledger
    receipts_checked: bool = False  # their signatures checked against the peer's key
    unwitnessed: tuple[int, int] | None = None
    unwitnessed_kinds: tuple[str, ...] = ()
    unwitnessed_reason: str = ""
    allow_unwitnessed_tail: bool = False
    witnessed_tail: str | None = None  # None: checked; otherwise why the check did not run

    @property
    def ok(self) -> bool:
        if self.status == BROKEN:
            return False
        if self.torn_tail is not None and not self.allow_torn_tail:
            return False
        return self.unwitnessed is None or self.allow_unwitnessed_tail

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

    def _coverage_status(self) -> str:
        if self.unwitnessed is not None:
            a, b = self.unwitnessed
            which = f"entry {a}" if a == b else f"entries {a}-{b}"
            return f"{which} ({', '.join(self.unwitnessed_kinds)}) NOT witnessed by a peer"
        if self.witnessed_tail is not None:
            return f"witnessed tail not checked ({self.witnessed_tail})"
        rc = f", {self.receipts} closing receipt(s)" + (" signature-checked" if self.receipts_checked else "")
        return f"every entry of a federated run witnessed (up to entry {self.covered}{rc})"

    def line(self) -> str:
        """One line: the verdict, as ``audit verify`` prints it."""
        if self.status == BROKEN:
            return f"{self.path}: BROKEN at entry {self.first_bad} (line {self.first_bad_line}): {self.reason}"
        head = f"; head {self.head.index}:{self.head.digest}" if self.head else ""
        tail = f"; {self._heads_status()}; signatures {self.signature_status()}; {self._coverage_status()}"
        if self.status == UNWITNESSED:
            assert self.unwitnessed is not None
            verdict = ("UNWITNESSED TAIL (accepted with --allow-unwitnessed-tail)" if self.allow_unwitnessed_tail
                       else "UNWITNESSED TAIL")
            hint = "" if self.allow_unwitnessed_tail else (
                "; not intact: give the peer's ledger (--witness-ledger, or [audit] in the config), or pass "
                "--allow-unwitnessed-tail to accept a run that ended before its ledger was closed (a crash, a lost "
                "connection)")
            return (f"{self.path}: {verdict} at entry {self.unwitnessed[0]} (line {self.unwitnessed[0] + 1}): "
                    f"{self.unwitnessed_reason}; the {self.entries} entries verified{head}{tail}{hint}")
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
        if broken:
            out.append(Check(_WITNESSED_TAIL, "NOT RUN", "the ledger broke before its end"))
        elif self.unwitnessed is not None:
            out.append(Check(_WITNESSED_TAIL, "UNWITNESSED (allowed)" if self.allow_unwitnessed_tail else "FAILED",
                             f"{self._coverage_status()}: {self.unwitnessed_reason}"))
        elif self.witnessed_tail is not None:
            out.append(Check(_WITNESSED_TAIL, "NOT RUN", self.witnessed_tail))
        else:
            out.append(Check(_WITNESSED_TAIL, "ok", self._coverage_status()))
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
            "covered": self.covered, "receipts": self.receipts, "receipts_checked": self.receipts_checked,
            "unwitnessed": None if self.unwitnessed is None else {"first": self.unwitnessed[0],
                                                                  "last": self.unwitnessed[1],
                                                                  "kinds": list(self.unwitnessed_kinds)},
            "allow_unwitnessed_tail": self.allow_unwitnessed_tail,
            "checks": [{"check": c.name, "outcome": c.outcome, "detail": c.detail} for c in self.checks()],
        }

    def raise_for_status(self) -> None:
        """Raise :class:`LedgerError` (:class:`LedgerTornTail` for an unaccepted torn tail) unless ``ok``."""
        if self.ok:
            return
        if self.status == BROKEN or (self.torn_tail is not None and not self.allow_torn_tail):
            cls: type[LedgerError] = LedgerTornTail if self.status == TORN_TAIL else LedgerError
            raise cls(self.message or self.line(), index=self.first_bad, line=self.first_bad_line)
        assert self.unwitnessed is not None
        raise LedgerUnwitnessedTail(self.line(), index=self.unwitnessed[0], line=self.unwitnessed[0] + 1)


class LedgerTornTail(LedgerError):
    """The committed entries verified, but an incomplete last line follows (a crash mid-write, or a
    cut mid-line); refused unless the caller accepts torn tails."""


class LedgerUnwitnessedTail(LedgerError):
    """The entries verified, but the newest entries of a federated run were never witnessed by the
    peer (no head, no closing receipt covers them): cut-able unnoticed, so refused unless accepted."""


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
    owner: str | None = None,
    peer_key: bytes | None = None,
    receipted: Iterable[int] = (),
    allow_unwitnessed_tail: bool = False,
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

    The witnessed tail: every entry of a federated run (after a ``run_start`` of a federated silo
    or of the aggregator) must be covered by a witnessed head or by a closing receipt in this
    ledger (:meth:`Ledger.record_receipt`). Each receipt must name an entry of this ledger with
    its digest, for ``owner`` when given, and, with ``peer_key`` (the witness's Ed25519 key), carry
    the witness's signature. ``receipted`` are the entries the peer's ledger says it gave a receipt
    for (:func:`final_heads`): each needs its receipt here. Entries left uncovered make the verdict
    :data:`UNWITNESSED`, ``ok`` only with ``allow_unwitnessed_tail``. An aggregator's closing entries
    are witnessed only in the silos' ledgers: without them (no head given) the check does not run.
    """
    p = Path(path)
    res = VerifyResult(str(p), public_key=public_key.hex() if public_key is not None else None,
                       key_source=key_source if public_key is not None else None, allow_torn_tail=allow_torn_tail,
                       allow_unwitnessed_tail=allow_unwitnessed_tail)

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
    objs: list[dict[str, Any]] = []
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
        objs.append(obj)
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
    failure = _check_witnessed_tail(res, objs, digests, heads, owner, peer_key, receipted)
    if failure is not None:
        return broken(_HEADS, *failure)
    if res.torn_tail is not None:
        res.status, res.failed_check = TORN_TAIL, _TAIL
        res.first_bad, res.first_bad_line = len(lines), len(lines) + 1
        res.reason = (f"incomplete last line ({res.torn_tail.length} bytes at byte {res.torn_tail.offset}, not a "
                      "complete entry): a crash mid-write, or the file was truncated mid-line; never committed, "
                      "not counted")
        res.message = res.line()
        return res
    res.status = INTACT if res.unwitnessed is None else UNWITNESSED
    if res.unwitnessed is not None:
        res.first_bad, res.first_bad_line = res.unwitnessed[0], res.unwitnessed[0] + 1
        res.reason = res.unwitnessed_reason
        res.message = res.line()
    return res


def _federated(obj: Mapping[str, Any]) -> bool | None:
    """For a ``run_start`` entry: whether its run is witnessed by a peer (a federated silo, the aggregator)."""
    if obj.get("kind") != "run_start":
        return None
    return obj.get("role") == "aggregator" or obj.get("mode") == "federated"


def _check_witnessed_tail(res: VerifyResult, objs: list[dict[str, Any]], digests: list[str],
                          heads: list[tuple[LedgerHead, bool]], owner: str | None, peer_key: bytes | None,
                          receipted: Iterable[int]) -> tuple[int, str] | None:
    """Fill ``res``'s witnessed-tail fields; return (index, reason) when a receipt is forged or misplaced."""
    covered = max((h.index for h, _ in heads), default=-1)
    receipts: dict[int, int] = {}  # covered index -> the receipt entry
    res.receipts_checked = peer_key is not None
    for i, obj in enumerate(objs):
        r = obj.get(RECEIPT_FIELD) if obj.get("kind") == WITNESS_KIND else None
        if r is None:
            continue
        if not isinstance(r, Mapping) or set(r) != {"for", "index", "digest", "signature"}:
            return i, "a closing receipt without for/index/digest/signature (edited)"
        k, digest, sig, who = r["index"], r["digest"], r["signature"], r["for"]
        if type(k) is not int or not 0 <= k < i or not isinstance(digest, str) or digests[k] != digest:
            return i, (f"a closing receipt names entry {k!r} with a digest this ledger does not hold there "
                       "(copied from another ledger, or the entries before it were replaced)")
        if owner is not None and who != owner:
            return i, f"a closing receipt made out to {who!r}, this ledger is {owner!r}'s"
        if peer_key is not None and not (isinstance(sig, str) and _is_hex(sig)
                                         and receipt_ok(peer_key, str(who), k, digest, bytes.fromhex(sig))):
            return i, "a closing receipt not signed by the witness's key (forged, or signed by another key)"
        receipts[k] = i
        covered = max(covered, k)
    res.receipts, res.covered = len(receipts), covered
    missing = sorted(k for k in set(receipted) if 0 <= k < len(objs) and k not in receipts)
    # which entries a peer must have witnessed: those of federated runs; a ledger with no run_start at
    # all (written through the library) counts as one federated run once a peer witnessed any of it
    runs = [f for f in map(_federated, objs) if f is not None]
    federated = not runs and (covered >= 0 or bool(missing))
    aggregator, must = False, []
    for i, obj in enumerate(objs):
        f = _federated(obj)
        if f is not None:
            federated, aggregator = f, obj.get("role") == "aggregator"
        if federated and i > covered and i not in receipts.values():
            must.append(i)
    if not missing and not any(runs) and not federated:
        res.witnessed_tail = "no federated run in this ledger (local runs have no witness)"
        return None
    if not missing and aggregator and not heads and not receipts:
        res.witnessed_tail = ("an aggregator's closing entries are witnessed in the silos' ledgers; none given "
                              "(--witness-ledger, or [audit] peer_ledgers in aggregator.toml)")
        return None
    if missing:
        k = missing[0]
        res.unwitnessed = (k + 1, len(objs) - 1) if k + 1 < len(objs) else (k, k)
        res.unwitnessed_kinds = tuple(str(objs[j].get("kind")) for j in range(res.unwitnessed[0], res.unwitnessed[1] + 1))
        res.unwitnessed_reason = (f"the peer's ledger says it gave a closing receipt for entry {k}; this ledger "
                                  "holds none (its last entry was deleted, or the run stopped before recording it)")
        return None
    if must:
        res.unwitnessed = (must[0], must[-1])
        res.unwitnessed_kinds = tuple(dict.fromkeys(str(objs[j].get("kind")) for j in must))
        last = f"entry {covered}" if covered >= 0 else "none"
        res.unwitnessed_reason = (f"{len(must)} entr{'y' if len(must) == 1 else 'ies'} of a federated run after the "
                                  f"newest entry a peer witnessed ({last}): these can be cut unnoticed")
    return None


def verify(
    path: str | os.PathLike,
    *,
    public_key: bytes | None = None,
    witnessed_heads: Iterable[LedgerHead] = (),
    recorded_heads: Iterable[LedgerHead | tuple[int, str]] = (),
    allow_torn_tail: bool = False,
    allow_unwitnessed_tail: bool = False,
    **tail: Any,
) -> int:
    """:func:`verify_ledger`, raising: return the entry count or raise :class:`LedgerError`.

    The error names the first bad entry (index and file line); a torn last line raises
    :class:`LedgerTornTail` unless ``allow_torn_tail`` (then the committed entries are counted),
    an unwitnessed tail :class:`LedgerUnwitnessedTail` unless ``allow_unwitnessed_tail``
    (``tail`` passes ``owner``, ``peer_key`` and ``receipted`` on).
    """
    res = verify_ledger(path, public_key=public_key, witnessed_heads=witnessed_heads,
                        recorded_heads=recorded_heads, allow_torn_tail=allow_torn_tail,
                        allow_unwitnessed_tail=allow_unwitnessed_tail, **tail)
    res.raise_for_status()
    return res.entries
