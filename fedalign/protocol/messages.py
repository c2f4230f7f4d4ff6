"""Round-level wire messages between silo and aggregator, and the stages of a round.

Frozen dataclasses of simple fields and numpy arrays (no torch: both sides convert at their
edges), encoded by :mod:`fedalign.protocol.wire`. The secure-sum messages inside a phase are crypto's
own (``crypto.messages``); :data:`MESSAGE_TYPES` lists ours, and the runtime registers both.

One round (docs/design.md §3)::

    aggregator                                   silo
    RoundStart(params, public, roster, seed) ──►  trains its shard, charges its accountant
                                             ◄──  UpdateReady(epsilon)
    SumStart(phase 0, participants, public)  ──►  contribution → secure-sum messages ⇄
    SumStart(phase 1, …)                     ──►  …
    RoundEnd(committed, metrics)             ──►  commits its carried state
    … RunEnd(params) at the end              ──►  writes run_end in its ledger
                                             ◄──  LedgerClose(its final head)
    LedgerReceipt(signed receipt, own head)  ──►  records it: the ledgers' tails are witnessed
    Heartbeat / LeaveNotice from silos at any time
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fedalign.protocol.errors import WireFormatError

__all__ = [
    "Stage",
    "SumScheme",
    "Heartbeat",
    "RoundStart",
    "UpdateReady",
    "SumStart",
    "RoundEnd",
    "RunEnd",
    "LeaveNotice",
    "ModelDeclaration",
    "JoinReply",
    "LedgerClose",
    "LedgerReceipt",
    "MESSAGE_TYPES",
    "wire_registry",
]

Arrays = Mapping[str, np.ndarray]

CKKS_POLY_MODULI = (8192, 16384)  # what crypto.config.SecureSumConfig accepts in every mode
_MAX_PHASES = 64


class Stage(enum.StrEnum):
    """Where a silo or the aggregator is within the run."""

    JOIN = "join"
    TRAIN = "train"
    SUM = "sum"
    UPDATE = "update"
    DONE = "done"


class SumScheme(enum.StrEnum):
    """The built-in schemes' names, as constants. ``PLAIN_INSECURE`` shows the aggregator each input.
    A SumStart may name any scheme registered in crypto's table (fedalign.crypto.schemes)."""

    SECAGG = "secagg"
    CKKS = "ckks"
    PLAIN_INSECURE = "plain"


def _arrays(owner: str, name: str, value: object) -> None:
    if not isinstance(value, Mapping):
        raise WireFormatError(f"{owner}.{name} must be a map name -> array, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise WireFormatError(f"{owner}.{name}[{_show(k)}] must be a numpy array keyed by str, got {type(v).__name__}")


def _nonneg(owner: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WireFormatError(f"{owner}.{name} must be an int >= 0, got {_show(value)}")


def _show(value: object) -> str:
    """A value's type and a short repr, for error messages about untrusted input."""
    r = repr(value)
    return f"{type(value).__name__} {r if len(r) <= 60 else r[:57] + '...'}"


def _names(owner: str, name: str, value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(s, str) and s for s in value):
        raise WireFormatError(f"{owner}.{name} must be a tuple of non-empty silo names, got {_show(value)}")


def _text(owner: str, name: str, value: object) -> None:
    if not isinstance(value, str):
        raise WireFormatError(f"{owner}.{name} must be a str, got {_show(value)}")


def _finite(owner: str, name: str, value: object, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise WireFormatError(f"{owner}.{name} must be a finite number {bound}, got {_show(value)}")


@dataclass(frozen=True)
class Heartbeat:
    """Silo → aggregator, every few seconds while idle: alive, and where it stands.

    ``last_committed`` is the last round whose result the silo has committed (-1: none); a
    restarted aggregator uses heartbeats to rebuild its roster.
    """

    stage: Stage
    last_committed: int

    def __post_init__(self) -> None:
        if not isinstance(self.stage, Stage):
            raise WireFormatError(f"Heartbeat.stage must be a Stage, got {self.stage!r}")
        lc = self.last_committed
        if not isinstance(lc, int) or isinstance(lc, bool) or lc < -1:
            raise WireFormatError(f"Heartbeat.last_committed must be an int >= -1, got {_show(lc)}")


@dataclass(frozen=True)
class RoundStart:
    """Aggregator → silo: the global parameters θ_t and everything public for round t.

    ``previous_survivors`` are the silos whose update round t-1 applied, so a silo that missed
    that round's :class:`RoundEnd` (an aggregator restart) still knows whether to commit.
    """

    round: int
    params: Arrays
    public: Arrays
    roster: tuple[str, ...]
    seed: bytes
    strategy: str
    strategy_options: Mapping[str, object]
    n_phases: int
    train_deadline_s: float
    previous_survivors: tuple[str, ...]
    ledger_head: Mapping[str, object] = field(default_factory=dict)  # the aggregator's, for silos to witness

    def __post_init__(self) -> None:
        _nonneg("RoundStart", "round", self.round)
        _arrays("RoundStart", "params", self.params)
        _arrays("RoundStart", "public", self.public)
        _names("RoundStart", "roster", self.roster)
        if not isinstance(self.seed, bytes) or len(self.seed) != 32:
            raise WireFormatError("RoundStart.seed must be 32 bytes")
        _text("RoundStart", "strategy", self.strategy)
        if not isinstance(self.n_phases, int) or isinstance(self.n_phases, bool) or not 1 <= self.n_phases <= _MAX_PHASES:
            raise WireFormatError(f"RoundStart.n_phases must be an int in 1..{_MAX_PHASES}, got {_show(self.n_phases)}")
        if not isinstance(self.strategy_options, Mapping) or not all(isinstance(k, str) for k in self.strategy_options):
            raise WireFormatError("RoundStart.strategy_options must be a map keyed by str")
        _finite("RoundStart", "train_deadline_s", self.train_deadline_s, positive=True)
        _names("RoundStart", "previous_survivors", self.previous_survivors)


@dataclass(frozen=True)
class UpdateReady:
    """Silo → aggregator: local training of ``round`` finished and the accountant was charged."""

    round: int
    epsilon: float
    ledger_head: Mapping[str, object] = field(default_factory=dict)  # the silo's signed head, for the aggregator to witness

    def __post_init__(self) -> None:
        _nonneg("UpdateReady", "round", self.round)
        _finite("UpdateReady", "epsilon", self.epsilon, positive=False)


@dataclass(frozen=True)
class SumStart:
    """Aggregator → silo: open secure-sum ``instance`` for ``phase`` among ``participants``.

    ``public`` holds what the aggregator derived from the previous phases' sums (empty in
    phase 0); silos add it to the round's public values before computing their contribution.
    ``clip``, ``neighbours`` (0: complete graph) and ``ckks_poly_modulus`` configure the sum;
    a silo checks participants and threshold against its own policy before it joins.
    """

    round: int
    phase: int
    instance: int
    scheme: str  # a name in crypto's scheme table (fedalign.crypto.schemes)
    participants: tuple[str, ...]
    threshold: int
    clip: float
    neighbours: int
    ckks_poly_modulus: int
    public: Arrays = field(default_factory=dict)

    def __post_init__(self) -> None:
        _nonneg("SumStart", "round", self.round)
        _nonneg("SumStart", "phase", self.phase)
        _nonneg("SumStart", "instance", self.instance)
        from fedalign.crypto.schemes import SCHEMES

        if not isinstance(self.scheme, str) or self.scheme not in SCHEMES:
            raise WireFormatError(f"SumStart.scheme must be one of {sorted(SCHEMES)}, got {_show(self.scheme)}")
        _names("SumStart", "participants", self.participants)
        if len(set(self.participants)) != len(self.participants):
            raise WireFormatError("SumStart.participants must be a tuple of distinct silo names")
        t = self.threshold
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= max(1, len(self.participants)):
            raise WireFormatError(f"SumStart.threshold must be an int in 1..{max(1, len(self.participants))}, got {_show(t)}")
        _finite("SumStart", "clip", self.clip, positive=True)
        if not isinstance(self.neighbours, int) or isinstance(self.neighbours, bool) or self.neighbours < 0:
            raise WireFormatError(f"SumStart.neighbours must be an int >= 0, got {_show(self.neighbours)}")
        if type(self.ckks_poly_modulus) is not int or self.ckks_poly_modulus not in CKKS_POLY_MODULI:
            raise WireFormatError(
                f"SumStart.ckks_poly_modulus must be one of {CKKS_POLY_MODULI}, got {_show(self.ckks_poly_modulus)}")
        _arrays("SumStart", "public", self.public)


@dataclass(frozen=True)
class RoundEnd:
    """Aggregator → silo: round ``round`` was committed (checkpointed) or abandoned."""

    round: int
    committed: bool
    reason: str
    survivors: tuple[str, ...]

    def __post_init__(self) -> None:
        _nonneg("RoundEnd", "round", self.round)
        if not isinstance(self.committed, bool):
            raise WireFormatError(f"RoundEnd.committed must be a bool, got {_show(self.committed)}")
        _text("RoundEnd", "reason", self.reason)
        _names("RoundEnd", "survivors", self.survivors)


@dataclass(frozen=True)
class RunEnd:
    """Aggregator → silo: the run is over; ``params`` are the final global parameters."""

    rounds_done: int
    params: Arrays
    reason: str

    def __post_init__(self) -> None:
        _nonneg("RunEnd", "rounds_done", self.rounds_done)
        _arrays("RunEnd", "params", self.params)
        _text("RunEnd", "reason", self.reason)


@dataclass(frozen=True)
class LeaveNotice:
    """Silo → aggregator: the silo leaves the run (budget spent, operator stop, error)."""

    reason: str

    def __post_init__(self) -> None:
        _text("LeaveNotice", "reason", self.reason)


# What a projector declaration may hold (issue #26: 16k shapes cost ~140 ms per message, and a
# silo repeats its declaration while it waits). Real projectors have a handful of tensors.
MAX_DECLARED_TENSORS = 64
MAX_DECLARED_NAME_CHARS = 128
MAX_DECLARED_DIMS = 8
MAX_DECLARED_DIM = 2**31


def _declaration_bounds(shapes: object) -> None:
    """The size limits of ModelDeclaration.shapes, checked before anything walks it."""
    if not isinstance(shapes, Mapping):
        return  # the type check names that
    if len(shapes) > MAX_DECLARED_TENSORS:
        raise WireFormatError(f"ModelDeclaration.shapes declares {len(shapes)} tensors, over the limit of "
                              f"{MAX_DECLARED_TENSORS}")
    for k, v in shapes.items():
        if isinstance(k, str) and len(k) > MAX_DECLARED_NAME_CHARS:
            raise WireFormatError(f"ModelDeclaration.shapes: tensor name {_show(k[:60])} has {len(k)} chars, over the "
                                  f"limit of {MAX_DECLARED_NAME_CHARS}")
        if isinstance(v, (tuple, list)):
            if len(v) > MAX_DECLARED_DIMS:
                raise WireFormatError(f"ModelDeclaration.shapes[{_show(k)}] has {len(v)} dims, over the limit of "
                                      f"{MAX_DECLARED_DIMS}")
            if any(isinstance(d, int) and d > MAX_DECLARED_DIM for d in v):
                raise WireFormatError(f"ModelDeclaration.shapes[{_show(k)}] has a dim over the limit of "
                                      f"2**31 ({MAX_DECLARED_DIM})")


@dataclass(frozen=True)
class ModelDeclaration:
    """Silo → aggregator, at join (repeated while it waits): the projector it will train.

    ``shapes`` maps each projector tensor to its shape; ``vision_tower`` and ``llm`` say where
    the silo's frozen models came from (as configured), ``d_vision`` / ``d_model`` their sizes.
    The aggregator refuses a silo whose shapes differ from its θ before any round starts.
    """

    projector: str
    shapes: Mapping[str, tuple[int, ...]]
    vision_tower: str
    llm: str
    d_vision: int
    d_model: int

    @staticmethod
    def _wire_precheck(body: Mapping[str, object]) -> None:
        """Called by the decoder before it type-checks the body element by element."""
        _declaration_bounds(body.get("shapes"))

    def __post_init__(self) -> None:
        if not isinstance(self.shapes, Mapping):
            raise WireFormatError("ModelDeclaration.shapes must be a map name -> shape")
        _declaration_bounds(self.shapes)
        for k, v in self.shapes.items():
            if not isinstance(k, str) or not isinstance(v, tuple) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v):
                raise WireFormatError(f"ModelDeclaration.shapes[{k!r}] must be a tuple of ints >= 0")
        for name in ("projector", "vision_tower", "llm"):
            if not isinstance(getattr(self, name), str):
                raise WireFormatError(f"ModelDeclaration.{name} must be a str")
        _nonneg("ModelDeclaration", "d_vision", self.d_vision)
        _nonneg("ModelDeclaration", "d_model", self.d_model)


@dataclass(frozen=True)
class JoinReply:
    """Aggregator → silo: joined (``accepted``) or refused with ``reason``; while the aggregator
    waits for silos it repeats this with who is ``connected``, who is ``missing`` and the
    seconds until it gives up (``deadline_s``)."""

    accepted: bool
    reason: str
    connected: tuple[str, ...]
    missing: tuple[str, ...]
    deadline_s: float

    def __post_init__(self) -> None:
        if not isinstance(self.accepted, bool):
            raise WireFormatError("JoinReply.accepted must be a bool")
        for name in ("connected", "missing"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not all(isinstance(s, str) for s in v):
                raise WireFormatError(f"JoinReply.{name} must be a tuple of silo names")


@dataclass(frozen=True)
class LedgerClose:
    """Silo → aggregator, after :class:`RunEnd`: the silo's final signed ledger head (its ``run_end``
    written), for the aggregator to witness and receipt; an empty ``head``: this silo keeps no ledger."""

    head: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.head, Mapping):
            raise WireFormatError("LedgerClose.head must be a map")


@dataclass(frozen=True)
class LedgerReceipt:
    """Aggregator → silo: it recorded ``head`` (the silo's :class:`LedgerClose`) as a final witness;
    ``receipt`` is its Ed25519 signature over (silo, index, digest), empty when the aggregator has no
    identity; ``aggregator_head`` is its own signed head after its ``run_end``, for the silo to witness."""

    head: Mapping[str, object]
    receipt: bytes
    aggregator_head: Mapping[str, object]

    def __post_init__(self) -> None:
        for name in ("head", "aggregator_head"):
            if not isinstance(getattr(self, name), Mapping):
                raise WireFormatError(f"LedgerReceipt.{name} must be a map")
        if not isinstance(self.receipt, bytes) or len(self.receipt) not in (0, 64):
            raise WireFormatError("LedgerReceipt.receipt must be 64 bytes (an Ed25519 signature) or empty")


MESSAGE_TYPES: dict[str, type] = {
    c.__name__: c
    for c in (Heartbeat, RoundStart, UpdateReady, SumStart, RoundEnd, RunEnd, LeaveNotice, ModelDeclaration,
              JoinReply, LedgerClose, LedgerReceipt)
}


def wire_registry() -> dict[str, type]:
    """Every type allowed off the wire: ours plus crypto's secure-sum messages (names distinct)."""
    from fedalign.crypto.messages import MESSAGE_TYPES as CRYPTO_TYPES

    clash = set(MESSAGE_TYPES) & set(CRYPTO_TYPES)
    if clash:
        raise TypeError(f"message type names used twice: {sorted(clash)}")
    return {**MESSAGE_TYPES, **CRYPTO_TYPES}
