"""Internals shared by the protocol state machines: envelope checks and array layouts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from fedalign.crypto.errors import CryptoError, SecureSumUsageError
from fedalign.crypto.messages import Message

__all__ = ["check_envelope", "check_ids", "Layout", "StepMachine"]


def check_envelope(msg: object, cls: type[Message], round_id: int, instance_id: int, sender: str) -> None:
    """Raise the opaque CryptoError unless ``msg`` is a ``cls`` of this round, instance, stage, sender."""
    ok = (
        type(msg) is cls
        and type(msg.round_id) is int
        and type(msg.instance_id) is int
        and msg.round_id == round_id
        and msg.instance_id == instance_id
        and msg.stage == cls.STAGE.value
        and msg.sender == sender
    )
    if not ok:
        raise CryptoError(f"message rejected (from {sender!r}, expected {cls.__name__} at stage {cls.STAGE.value})")


def check_own_identity(identity, silo_id: str, roster) -> None:
    """A silo-side instance may start only for a roster member holding that member's identity key."""
    if silo_id not in roster:
        raise SecureSumUsageError(f"silo {silo_id!r} is not in the roster")
    if roster.members[silo_id] != identity.public_bytes:
        raise SecureSumUsageError(f"silo {silo_id!r}: identity key does not match the roster entry")


def check_ids(value: object, allowed, *, what: str) -> tuple[str, ...]:
    """A sorted tuple of distinct ids, all in ``allowed``; CryptoError otherwise."""
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        raise CryptoError(f"{what}: malformed id list")
    if list(value) != sorted(set(value)) or not set(value) <= set(allowed):
        raise CryptoError(f"{what}: bad id list")
    return value


@dataclass(frozen=True)
class Layout:
    """Named arrays in sorted name order, flattened C-order into one vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @classmethod
    def of_inputs(cls, inputs: Mapping[str, np.ndarray]) -> "Layout":
        if not isinstance(inputs, Mapping) or not inputs:
            raise SecureSumUsageError("inputs must be a non-empty mapping name -> numpy array")
        names = tuple(sorted(inputs))
        for n in names:
            if not isinstance(n, str) or not n:
                raise SecureSumUsageError(f"input name {n!r} must be a non-empty str")
            if not isinstance(inputs[n], np.ndarray):
                raise SecureSumUsageError(f"input {n!r} must be a numpy array, got {type(inputs[n]).__name__}")
        return cls(names, tuple(tuple(int(d) for d in inputs[n].shape) for n in names))

    @classmethod
    def from_wire(cls, names: object, shapes: object) -> "Layout":
        """Validate a layout from a message; CryptoError if malformed."""
        ok = (
            isinstance(names, tuple)
            and isinstance(shapes, tuple)
            and len(names) == len(shapes)
            and all(isinstance(n, str) and n for n in names)
            and list(names) == sorted(set(names))
            and all(isinstance(s, tuple) and all(type(d) is int and d >= 0 for d in s) for s in shapes)
        )
        if not ok:
            raise CryptoError("message rejected (malformed layout)")
        return cls(names, shapes)

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out, at = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = flat[at : at + size].reshape(shape)
            at += size
        return out

    def flatten(self, inputs: Mapping[str, np.ndarray], dtype) -> np.ndarray:
        flat = np.empty(self.total, dtype=dtype)
        at = 0
        for name, size in zip(self.names, self.sizes):
            flat[at : at + size] = np.asarray(inputs[name]).reshape(-1)
            at += size
        return flat


class StepMachine:
    """Aggregator-side bookkeeping of one step: who must answer, who did, when it ends.

    Subclasses implement ``_accept(stage, sender, msg)`` (validate fully, then store) and
    ``_advance(stage, answers)`` (end the step; return messages; raise SecAggAborted).
    """

    def __init__(self, first_stage, expected, threshold: int):
        self.stage = first_stage
        self.expected: frozenset[str] = frozenset(expected)
        self.answers: dict[str, Message] = {}
        self.threshold = threshold
        self.failed = False

    @property
    def waiting_for(self) -> frozenset[str]:
        """Silos that must still answer in the current step."""
        return self.expected - set(self.answers)

    def handle(self, sender: str, msg: object) -> list[tuple[str, Message]]:
        from fedalign.crypto.messages import Stage

        if self.failed or self.stage == Stage.DONE or sender not in self.expected or sender in self.answers:
            raise CryptoError(f"message rejected (from {sender!r} at stage {self.stage.value})")
        stored = self._accept(self.stage, sender, msg)
        self.answers[sender] = stored
        if not self.waiting_for:
            return self.close_step()
        return []

    def close_step(self) -> list[tuple[str, Message]]:
        """End the current step with whoever answered; the silent ones are dropouts."""
        from fedalign.crypto.errors import SecAggAborted
        from fedalign.crypto.messages import Stage

        if self.failed:
            raise SecAggAborted("secure sum was aborted; nothing was revealed")
        if self.stage == Stage.DONE:
            raise SecureSumUsageError("close_step(): the secure sum is already complete")
        answers = dict(sorted(self.answers.items()))
        try:
            need = self._minimum(self.stage)
            if len(answers) < need:
                raise SecAggAborted(
                    f"stage {self.stage.value}: {len(answers)} of {len(self.expected)} silos answered, "
                    f"{need} needed; aborted, nothing revealed"
                )
            out, next_stage, next_expected = self._advance(self.stage, answers)
        except Exception:
            self.failed = True
            self.answers = {}
            raise
        self.stage, self.expected, self.answers = next_stage, frozenset(next_expected), {}
        return out

    def _minimum(self, stage) -> int:
        """Answers a step needs to go on (the threshold, unless a step asks one silo)."""
        return self.threshold

    def _accept(self, stage, sender, msg):  # pragma: no cover - abstract
        raise NotImplementedError

    def _advance(self, stage, answers):  # pragma: no cover - abstract
        raise NotImplementedError
