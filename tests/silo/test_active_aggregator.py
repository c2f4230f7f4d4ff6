"""An actively malicious aggregator against real silos (SiloParticipant, real crypto, in-memory
transport): the attacks of issue #10 are refused, logged, and change nothing.

- Several SumStarts for the same (round, phase) over different silo sets: subtracting two sums
  would give one silo's input (docs/design.md §5: an input goes into at most one sum), also after the
  silo is killed and restarted with the same update.
- SumStart(scheme=ckks) in a secagg federation: the scheme is pinned by the silo.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch


from fedalign.lab.inprocess import list_log  # noqa: E402
from fedalign.lab.toy import MAX_WEIGHT, ToyTrainer, small_toy as toy  # noqa: E402

from fedalign.crypto.config import SecureSumConfig  # noqa: E402
from fedalign.crypto.errors import CryptoError, SecAggAborted  # noqa: E402
from fedalign.crypto.identity import Roster, generate_identity  # noqa: E402
from fedalign.crypto.messages import CkksInput, MaskedInput, Message as CryptoMessage, PlainInput  # noqa: E402
from fedalign.crypto.secure_sum import AggregatorSecureSum  # noqa: E402
from fedalign.fedcmp.strategies import make_strategy  # noqa: E402
from fedalign.protocol.messages import RoundStart, SumScheme, SumStart, UpdateReady, wire_registry  # noqa: E402
from fedalign.protocol.transport import AGGREGATOR, InMemoryNetwork  # noqa: E402
from fedalign.protocol.view import phase_view, round_view  # noqa: E402
from fedalign.protocol.wire import Envelope  # noqa: E402
from fedalign.silo.participant import SiloParticipant, SiloPolicy  # noqa: E402

_INPUTS = (MaskedInput, CkksInput, PlainInput)


class EvilAggregator:
    """Drives real silos by hand: any SumStart it likes, real AggregatorSecureSum underneath."""

    def __init__(self, names: list[str], *, n_silos: int | None = None, tmp: Path | None = None,
                 scheme: str = "secagg") -> None:
        self.names = names
        self.fed = toy(n_silos or len(names))
        self.ids = {s: generate_identity() for s in names}
        self.trusted = {s: k.public_hex for s, k in self.ids.items()}
        self.net = InMemoryNetwork(wire_registry())
        self.server = self.net.server()
        self.tmp, self.scheme = tmp, scheme
        self.events: list[dict] = []
        self.contributions: list[tuple[str, int, int]] = []  # (silo, round, phase) of every input computed
        self.inputs_seen: list[tuple[str, int, str]] = []  # (silo, instance, type) of every input message
        self.silos: dict[str, SiloParticipant] = {}
        self.stops: dict[str, threading.Event] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.strategy = make_strategy("fedavg")
        self.params = self.fed.init_params()
        self._inst = 100

    def start_silo(self, name: str, configure=None) -> SiloParticipant:
        Log = list_log(self.events)

        pol = SiloPolicy(min_silos=3, heartbeat_interval_s=0.2, aggregator_timeout_s=30, max_weight=MAX_WEIGHT,
                         scheme=self.scheme)
        stop = threading.Event()
        p = SiloParticipant(name, self.net.client(name), ToyTrainer(self.fed, self.names.index(name), fresh_on_retrain=False),
                            identity=self.ids[name], trusted=self.trusted, policy=pol,
                            state_dir=(self.tmp / name) if self.tmp is not None else None,
                            events=Log(None, source=name), stop=stop,
                            on_contribution=lambda r, ph, x, n=name: self.contributions.append((n, r, ph)))
        if configure is not None:
            configure(p)
        self.errors: dict[str, BaseException] = getattr(self, "errors", {})

        def run() -> None:
            try:
                p.run()
            except BaseException as e:  # noqa: BLE001 - the test looks at it
                self.errors[name] = e

        th = threading.Thread(target=run, daemon=True)
        self.silos[name], self.stops[name], self.threads[name] = p, stop, th
        th.start()
        return p

    def kill(self, name: str) -> None:
        self.stops[name].set()
        self.threads[name].join(10)
        self.net.disconnect(name)

    def _send(self, to: str, msg: Any, round_id: int, instance: int = -1, phase: int = -1) -> None:
        self.server.send(to, Envelope(round_id, instance, phase, AGGREGATOR, msg))

    def round_start(self, round_id: int, to: list[str]) -> None:
        from fedalign.aggregator.rounds import round_seed, to_numpy

        start = RoundStart(round_id, to_numpy(self.params), to_numpy(self.strategy.init_public(self.params)),
                           tuple(self.names), round_seed(0, round_id), "fedavg", {}, self.strategy.n_phases,
                           30.0, ())
        self.starts = {**getattr(self, "starts", {}), round_id: start}
        for s in to:
            self._send(s, start, round_id)
        ready: set[str] = set()
        deadline = time.monotonic() + 30
        while ready < set(to) and time.monotonic() < deadline:
            env = self.server.recv(0.2)
            if env is not None and isinstance(env.message, UpdateReady) and env.message.round == round_id:
                ready.add(env.sender)
        assert ready >= set(to), f"silos {sorted(set(to) - ready)} did not train"

    def run_sum(self, round_id: int, phase: int, participants: list[str], *, scheme: str | None = None,
                step_s: float = 1.0, threshold: int | None = None) -> dict[str, np.ndarray] | None:
        """One secure sum as an aggregator would run it; None if it aborted (too few joined)."""
        scheme = scheme or self.scheme
        self._inst += 1
        inst = self._inst
        t = len(participants) // 2 + 1
        t = threshold or max(t, min(3, len(participants)))
        msg = SumStart(round_id, phase, inst, SumScheme(scheme), tuple(participants), t, 16.0, 0, 8192)
        # the view every silo signs: an aggregator that wants a sum must compute it as the silos do
        view = phase_view(round_view(self.starts[round_id]), msg, tuple(sorted(participants)))
        cfg = SecureSumConfig(mode=scheme, threshold=t, clip=16.0, ckks_poly_modulus=8192, allow_insecure_plaintext=False,
                              view=view)
        agg = AggregatorSecureSum(Roster({s: self.trusted[s] for s in participants}), round_id, inst, cfg)
        for s in participants:
            self._send(s, msg, round_id, inst, phase)
        deadline = time.monotonic() + step_s
        stage = agg.stage
        try:
            while not agg.done:
                env = self.server.recv(0.05)
                if env is None:
                    if time.monotonic() > deadline:
                        for dest, m in agg.close_step():
                            self._send(dest, m, round_id, inst, phase)
                        deadline = time.monotonic() + step_s
                    continue
                m = env.message
                if isinstance(m, CryptoMessage) and m.instance_id == inst:
                    if isinstance(m, _INPUTS):
                        self.inputs_seen.append((env.sender, inst, type(m).__name__))
                    try:
                        out = agg.handle(env.sender, m)
                    except CryptoError:
                        continue
                    for dest, o in out:
                        self._send(dest, o, round_id, inst, phase)
                    if agg.stage != stage:
                        stage, deadline = agg.stage, time.monotonic() + step_s
        except SecAggAborted:
            return None
        return agg.result.sums

    def close(self) -> None:
        for s in list(self.threads):
            self.stops[s].set()
        for th in self.threads.values():
            th.join(10)

    def refusals(self, silo: str) -> list[dict]:
        return [e for e in self.events if e["source"] == silo and e["event"] == "sum_refused"]


def test_two_sums_for_one_round_and_phase_are_refused():
    names = ["a", "b", "c", "d"]
    ev = EvilAggregator(names)
    try:
        for s in names:
            ev.start_silo(s)
        ev.round_start(0, names)
        first = ev.run_sum(0, 0, names)
        assert first is not None  # the honest sum works
        joined = {s: dict(getattr(ev.silos[s].cur, "joined", {})) for s in names}
        n_inputs = len(ev.inputs_seen)
        # the attack: the same round and phase again over b, c, d; first - second would be a's input
        second = ev.run_sum(0, 0, ["b", "c", "d"])
        assert second is None
        assert len(ev.inputs_seen) == n_inputs  # nothing of the inputs left again
        assert sorted(c for c in ev.contributions) == sorted((s, 0, 0) for s in names)  # computed once each
        for s in ["b", "c", "d"]:
            (ref,) = ev.refusals(s)
            assert "already joined sum instance" in ref["reason"] and ref["phase"] == 0
            assert ev.silos[s].cur.joined == joined[s]  # state unchanged
    finally:
        ev.close()


def test_a_restarted_silo_does_not_put_the_same_update_into_a_second_sum(tmp_path):
    names = ["a", "b", "c", "d"]
    ev = EvilAggregator(names, tmp=tmp_path)
    try:
        for s in names:
            ev.start_silo(s)
        ev.round_start(0, names)
        assert ev.run_sum(0, 0, names) is not None
        ev.kill("a")
        ev.start_silo("a")  # same state dir; its (deterministic) trainer gives the same update again
        ev.round_start(0, ["a"])
        n_inputs = len(ev.inputs_seen)
        assert ev.run_sum(0, 0, ["a", "b", "c"]) is None
        assert [x for x in ev.inputs_seen[n_inputs:] if x[0] == "a"] == []
        assert ev.contributions.count(("a", 0, 0)) == 1
        (ref,) = ev.refusals("a")
        assert "before a restart" in ref["reason"]
        assert ev.silos["a"].cur.joined == {}
    finally:
        ev.close()


def test_a_ckks_sum_in_a_secagg_federation_is_refused():
    names = ["a", "b", "c"]
    ev = EvilAggregator(names, scheme="secagg")
    try:
        for s in names:
            ev.start_silo(s)
        ev.round_start(0, names)
        assert ev.run_sum(0, 0, names, scheme="ckks") is None
        assert ev.inputs_seen == [] and ev.contributions == []
        for s in names:
            (ref,) = ev.refusals(s)
            assert "scheme ckks is not this silo's configured scheme secagg" in ref["reason"]
            assert ev.silos[s].cur.joined == {} and ev.silos[s].cur.sum is None
        # the silos still take part in the sum their own configuration allows
        assert ev.run_sum(0, 0, names, scheme="secagg") is not None
    finally:
        ev.close()
