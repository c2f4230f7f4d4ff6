"""Fuzzing a real :class:`SiloParticipant` with what a malicious or broken aggregator could send.

Each case builds a fresh silo (the toy trainer, Fed-CMP rank 2, its model declared), feeds it a
valid RoundStart and, for later-stage targets, a valid SumStart, then one mutated message: a
RoundStart, SumStart, RoundEnd, RunEnd, JoinReply, LedgerReceipt or one of crypto's
aggregator-to-silo messages, with one to three fields replaced (a float64 or wrong-shape tensor,
NaN and infinity, huge or negative numbers, unknown names, junk options, phases out of range).
How the silo ends is counted: ``ran on`` (it refused or ignored the message and went on),
``typed:<error>`` (it left with one of the toolkit's errors: one line, an exit code), or
``untyped:<error>`` (a crash: what issue 26 counts). A mutated message the message classes
refuse to build is ``decoder refused`` (the wire decoder builds messages the same way).

Used by tests/silo/test_silo_fuzz.py (a few thousand cases) and benchmarks/bench_silo_fuzz.py (≥100k).
"""

from __future__ import annotations

import dataclasses
import enum
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fedalign.lab.toy import MAX_WEIGHT, ToyTrainer, small_toy as toy

from fedalign.crypto.errors import CryptoError, SecureSumError
from fedalign.crypto.identity import generate_identity
from fedalign.crypto import messages as cm
from fedalign.fedcmp.strategies import make_strategy
from fedalign.protocol.errors import FedAlignError
from fedalign.protocol.messages import (JoinReply, LedgerReceipt, ModelDeclaration, RoundEnd, RoundStart,
                                        RunEnd, SumScheme, SumStart)
from fedalign.protocol.transport import AGGREGATOR
from fedalign.protocol.errors import WireFormatError
from fedalign.protocol.messages import wire_registry
from fedalign.protocol.wire import Envelope, decode, encode

REGISTRY = wire_registry()
from fedalign.silo.participant import SiloParticipant, SiloPolicy

NAMES = ("silo-0", "silo-1", "silo-2")
CRYPTO_FROM_AGGREGATOR = ("KeyRoster", "SharesRelay", "ConsistencyRequest", "UnmaskRequest", "CkksContextRelay",
                          "CkksDecryptRequest")
TARGETS = ("RoundStart", "SumStart", "RoundEnd", "RunEnd", "JoinReply", "LedgerReceipt", "crypto")


class _Feed:
    """A client transport that hands the silo a fixed list of envelopes, then stops it."""

    def __init__(self, envs: list[Envelope], stop: threading.Event) -> None:
        self.envs, self.stop, self.name = list(envs), stop, NAMES[0]
        self.sent: list[Envelope] = []

    def send(self, env: Envelope) -> int:
        self.sent.append(env)
        return 0

    def recv(self, timeout_s: float) -> Envelope | None:
        if self.envs:
            return self.envs.pop(0)
        self.stop.set()
        return None

    def close(self) -> None:
        pass


class _Trainer(ToyTrainer):
    def __init__(self, fed, index: int, shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__(fed, index)
        self.shapes = shapes

    def describe(self) -> ModelDeclaration:
        return ModelDeclaration("toy", self.shapes, "toy", "toy", 1, 1)


class SiloFuzz:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.fed = toy(len(NAMES))
        self.params = {k: v.numpy() for k, v in self.fed.init_params().items()}
        self.strategy = make_strategy("fedcmp", rank=2, reliability="off")
        import torch

        self.public = {k: v.numpy() for k, v in
                       self.strategy.init_public({k: torch.from_numpy(v) for k, v in self.params.items()}).items()}
        self.ids = {s: generate_identity() for s in NAMES}
        self.trusted = {s: k.public_hex for s, k in self.ids.items()}
        self.shapes = {k: tuple(v.shape) for k, v in self.params.items()}

    # ------------------------------------------------------------------ valid messages
    def round_start(self) -> RoundStart:
        return RoundStart(0, dict(self.params), dict(self.public), NAMES, b"\x01" * 32, "fedcmp",
                          {"rank": 2, "reliability": "off"}, self.strategy.n_phases, 30.0, ())

    def sum_start(self) -> SumStart:
        return SumStart(0, 0, 7, SumScheme.SECAGG, NAMES, 2, 16.0, 0, 8192, {})

    def valid(self, target: str) -> Any:
        if target == "RoundStart":
            return self.round_start()
        if target == "SumStart":
            return self.sum_start()
        if target == "RoundEnd":
            return RoundEnd(0, True, "committed", NAMES)
        if target == "RunEnd":
            return RunEnd(1, dict(self.params), "completed")
        if target == "JoinReply":
            return JoinReply(True, "", NAMES, (), 10.0)
        if target == "LedgerReceipt":
            return LedgerReceipt({"index": 0, "digest": "0" * 64, "signature": ""}, b"", {})
        cls = getattr(cm, self.rng.choice(CRYPTO_FROM_AGGREGATOR))
        fields = {}
        for f in dataclasses.fields(cls):
            if f.name == "round_id":
                fields[f.name] = 0
            elif f.name == "instance_id":
                fields[f.name] = self.rng.choice([7, 7, 8, -1])
            elif f.name == "sender":
                fields[f.name] = AGGREGATOR
            elif f.name == "stage":
                fields[f.name] = self.rng.choice(list(cm.Stage))
            else:
                fields[f.name] = self.junk()
        return cls, fields

    # ------------------------------------------------------------------ mutations
    def array(self) -> np.ndarray:
        r = self.rng
        k = r.choice(list(self.params))
        a = self.params[k]
        return r.choice([
            lambda: a.astype(np.float64), lambda: a.astype(np.int32), lambda: a.astype(np.float16),
            lambda: np.full_like(a, np.nan), lambda: np.full_like(a, np.inf), lambda: a[:1],
            lambda: np.zeros((0,), np.float32), lambda: np.float32(1.0) * np.ones((), np.float32),
            lambda: np.ones(a.shape + (2,), np.float32), lambda: np.ones((a.size,), np.float32),
            lambda: (a * 1e38).astype(np.float32), lambda: np.eye(max(a.shape[0], 1), dtype=np.float32),
            lambda: np.array([True, False]), lambda: np.ones((3, 3), np.complex64),
        ])()

    def junk(self) -> Any:
        r = self.rng
        return r.choice([
            lambda: None, lambda: True, lambda: -1, lambda: 0, lambda: 2 ** 63, lambda: 10 ** 30, lambda: 7,
            lambda: float("nan"), lambda: float("inf"), lambda: -1.0, lambda: 1e308, lambda: "",
            lambda: "x" * 5000, lambda: "silo-9", lambda: b"", lambda: bytes(r.randrange(256) for _ in range(32)),
            lambda: b"\x00" * 7, lambda: (), lambda: ("silo-0", "silo-0"), lambda: ("silo-9",), lambda: NAMES,
            lambda: {}, lambda: {"junk": 1}, lambda: {"rank": -3}, lambda: {"rank": "x", "beta": float("nan")},
            lambda: self.array(), lambda: {k: self.array() for k in self.params},
            lambda: {**self.params, "extra": np.ones(3, np.float32)},
            lambda: {k: v for k, v in list(self.params.items())[1:]},
        ])()

    def same_type(self, v: Any) -> Any:
        """A value of ``v``'s own type (what the decoder lets through): out of range, inconsistent, odd."""
        r = self.rng
        if isinstance(v, bool):
            return not v
        if isinstance(v, enum.Enum):
            return r.choice(list(type(v)))
        if isinstance(v, int):
            return r.choice([-1, 0, 1, 2, 3, 5, 63, 64, 65, 1000, 2 ** 31, 2 ** 62])
        if isinstance(v, float):
            return r.choice([0.0, -1.0, 1e-300, 1e300, 0.5, 3e9])
        if isinstance(v, str):
            return r.choice(["", "silo-9", "silo-0", "aggregator", "fedavg", "fedcmp", "fedprox", "x" * 300])
        if isinstance(v, bytes):
            return bytes(r.randrange(256) for _ in range(r.choice([0, 1, 31, 32, 33, 64])))
        if isinstance(v, tuple):
            return r.choice([(), ("silo-0",), ("silo-0", "silo-1"), ("silo-0", "silo-0", "silo-1"), NAMES,
                             NAMES + ("silo-9",), ("silo-9", "silo-8", "silo-7")])
        if isinstance(v, dict) and v and all(isinstance(a, np.ndarray) for a in v.values()):
            k = r.choice(list(v))
            return r.choice([{**v, k: self.array()}, {k2: a for k2, a in v.items() if k2 != k},
                             {**v, "extra": self.array()}, {}])
        if isinstance(v, dict):
            return r.choice([{}, {"rank": r.choice([-1, 0, 1, 10 ** 6, "x"])}, {"reliability": "weird"},
                             {"rank": 2, "reliability": "reference"}, {"beta": 2.5}, {"kappa": -1.0},
                             {"index": r.choice([-5, 0, 10 ** 9]), "digest": "0" * 64, "signature": ""},
                             {"index": 0, "digest": "zz", "signature": "00"}])
        return self.junk()

    def mutate(self, target: str) -> tuple[str, Any]:
        """(outcome-if-refused-at-build, message or None)."""
        base = self.valid(target)
        if target == "crypto":
            cls, fields = base
        else:
            cls, fields = type(base), {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        names = list(fields)
        for name in self.rng.sample(names, k=min(len(names), self.rng.randint(1, 3))):
            v = fields[name]
            fields[name] = self.same_type(v) if self.rng.random() < 0.85 else self.junk()
        # built without its checks, then through the real wire: what a malicious aggregator can put on
        # the wire is what encode() accepts; what reaches the silo is what decode() builds from it
        msg = object.__new__(cls)
        for k, v in fields.items():
            object.__setattr__(msg, k, v)
        staged = target in ("SumStart", "crypto")
        try:
            frames = encode(Envelope(0, 7 if staged else -1, 0 if staged else -1, AGGREGATOR, msg))
        except Exception:  # noqa: BLE001 - not expressible on the wire at all
            return "unsendable", None
        try:
            return "", decode(frames, REGISTRY)
        except WireFormatError:
            return "decoder refused", None
        except Exception as e:  # noqa: BLE001 - decode() promises WireFormatError only: a crash there counts
            self.last_detail = f"{cls.__name__}: {e!r:.160}"
            return f"decoder untyped:{type(e).__name__}", None

    # ------------------------------------------------------------------ one case
    def case(self) -> tuple[str, str, str]:
        target = self.rng.choice(TARGETS)
        early, msg = self.mutate(target)  # msg: the decoded Envelope
        if msg is None:
            return target, early, getattr(self, "last_detail", "") if "untyped" in early else ""
        envs = []
        if target != "RoundStart":
            envs.append(Envelope(0, -1, -1, AGGREGATOR, self.round_start()))
        if target in ("crypto",):
            envs.append(Envelope(0, 7, 0, AGGREGATOR, self.sum_start()))
        envs.append(msg)  # the decoded envelope
        stop = threading.Event()
        feed = _Feed(envs, stop)
        p = SiloParticipant(NAMES[0], feed, _Trainer(self.fed, 0, self.shapes), identity=self.ids[NAMES[0]],
                            trusted=self.trusted, stop=stop,
                            policy=SiloPolicy(min_silos=2, heartbeat_interval_s=0.01, aggregator_timeout_s=60,
                                              max_weight=MAX_WEIGHT, receipt_timeout_s=0.01))
        try:
            p.run()
        except (FedAlignError, CryptoError, SecureSumError) as e:
            return target, f"typed:{type(e).__name__}", str(e)[:160]
        except Exception as e:  # noqa: BLE001 - what issue 26 counts
            import traceback

            where = traceback.extract_tb(e.__traceback__)[-1]
            return target, f"untyped:{type(e).__name__}", f"{e!s:.200} at {Path(where.filename).name}:{where.lineno}"
        return target, "ran on", ""


def run(n: int, seed: int = 0) -> dict[str, Any]:
    fz = SiloFuzz(seed)
    outcomes: Counter[str] = Counter()
    by_target: dict[str, Counter[str]] = {}
    untyped: list[tuple[str, str, str]] = []
    for _ in range(n):
        target, outcome, detail = fz.case()
        outcomes[outcome] += 1
        by_target.setdefault(target, Counter())[outcome] += 1
        if "untyped" in outcome and len(untyped) < 20:
            untyped.append((target, outcome, detail))
    n_untyped = sum(v for k, v in outcomes.items() if "untyped" in k)
    return {"cases": n, "untyped": n_untyped, "outcomes": dict(outcomes),
            "by_target": {k: dict(v) for k, v in by_target.items()}, "untyped_examples": untyped}
