"""What an operator sees while a federation forms (issue #12): no silent waits, refusals before
any training, and a run given up is told to the silos still connected.

In-memory transport and real silo participants (toy trainer) unless a test says ZeroMQ.
"""

from __future__ import annotations

import io
import socket

import pytest
import torch

from fedalign.protocol.errors import ConfigError, ProtocolError, RoundAborted
from fedalign.compliance.eventlog import EventLog
from fedalign.protocol.messages import ModelDeclaration, wire_registry
from fedalign.protocol.transport import InMemoryNetwork
from fedalign.crypto.identity import generate_identity
from fedalign.silo.participant import SiloParticipant, SiloPolicy

from fedalign.lab.toy import ToyTrainer, small_toy as toy
from fedalign.lab.toy_federation import run_federation


class _Events(EventLog):
    def __init__(self, source: str) -> None:
        super().__init__(None, source=source)
        self.records: list[dict] = []

    def emit(self, event, **f):
        rec = super().emit(event, **f)
        self.records.append(rec)
        return rec

    def of(self, event: str) -> list[dict]:
        return [r for r in self.records if r["event"] == event]


def _silent(name, client, net):
    """silo-2 is cut off: it runs, but nothing it sends arrives (as if it never started)."""
    if name == "silo-2":
        net.disconnect(name)
    return client


def test_an_aggregator_short_of_silos_says_who_is_connected_and_missing_and_tells_them_when_it_gives_up():
    res = run_federation(3, 1, wrap_client=_silent,
                         policy_overrides={"roster_wait_s": 2.0, "report_interval_s": 0.3, "max_failed_rounds": 1})
    assert isinstance(res.error, RoundAborted)
    assert "missing: silo-2" in str(res.error)
    agg = [e for e in res.events if e["source"] == "aggregator"]
    connected = {e["silo"] for e in agg if e["event"] == "silo_connected"}
    assert connected == {"silo-0", "silo-1"}
    waits = [e for e in agg if e["event"] == "waiting_for_silos"]
    assert len(waits) >= 2, agg  # repeated while it waits, not only at the end
    assert waits[-1]["connected"] == ["silo-0", "silo-1"] and waits[-1]["missing"] == ["silo-2"]
    assert waits[0]["seconds_left"] > waits[-1]["seconds_left"] >= 0
    aborted = [e for e in agg if e["event"] == "run_aborted"]
    assert aborted and aborted[0]["told"] == ["silo-0", "silo-1"]
    for s in ("silo-0", "silo-1"):  # the connected silos heard it, and why
        out = res.silos[s]
        assert not isinstance(out, BaseException), out
        assert out.reason.startswith("aborted") and "silo-2" in out.reason
        seen = [e for e in res.events if e["source"] == s]
        assert any(e["event"] == "joined" for e in seen)
        assert any(e["event"] == "aggregator_waiting" and e["missing"] == ["silo-2"] for e in seen)


def test_a_silo_with_no_aggregator_says_so_naming_the_address_and_keeps_trying():
    net = InMemoryNetwork(wire_registry())  # no server end ever reads
    ids = {"a": generate_identity()}
    ev = _Events("a")
    p = SiloParticipant("a", net.client("a"), ToyTrainer(toy(1), 0), identity=ids["a"],
                        trusted={"a": ids["a"].public_hex}, events=ev, address="tcp://10.0.0.7:5555",
                        policy=SiloPolicy(heartbeat_interval_s=0.05, wait_report_s=0.2, aggregator_timeout_s=1.0))
    with pytest.raises(ProtocolError, match=r"tcp://10\.0\.0\.7:5555"):
        p.run()
    waits = ev.of("waiting_for_aggregator")
    assert len(waits) >= 2 and all(w["address"] == "tcp://10.0.0.7:5555" for w in waits)
    assert waits[0]["gives_up_in_s"] >= waits[-1]["gives_up_in_s"]


def test_a_silo_over_zeromq_with_nothing_at_the_address_prints_the_address_while_retrying(tmp_path):
    from rich.console import Console

    from fedalign.protocol.keys import load_keypair, load_public, write_keypair
    from fedalign.silo.client import ZmqClient
    from fedalign.silo.console import ConsoleEvents

    write_keypair(tmp_path, "aggregator", role="aggregator")
    write_keypair(tmp_path, "a", role="silo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"  # nothing listens here
    ev = ConsoleEvents(None, source="a")
    buf = io.StringIO()
    ev.console = Console(file=buf, width=60, soft_wrap=True)
    ident = generate_identity()
    policy = SiloPolicy(heartbeat_interval_s=0.1, wait_report_s=0.3, aggregator_timeout_s=1.2)
    client = ZmqClient(endpoint, "a", keypair=load_keypair(tmp_path / "a.key_secret"),
                       server_public=load_public(tmp_path / "aggregator.key"), registry=wire_registry())
    try:
        p = SiloParticipant("a", client, ToyTrainer(toy(1), 0), identity=ident, trusted={"a": ident.public_hex},
                            events=ev, address=endpoint, policy=policy)
        with pytest.raises(ProtocolError, match=endpoint):
            p.run()
    finally:
        client.close()
    lines = [l for l in buf.getvalue().splitlines() if "no answer from the aggregator" in l]
    assert lines and all(endpoint in l and "still trying" in l for l in lines), buf.getvalue()


class _Declaring(ToyTrainer):
    """A toy trainer that declares its model (as SessionTrainer does) and counts its rounds."""

    def __init__(self, fed, index, shapes) -> None:
        super().__init__(fed, index)
        self.shapes, self.trained = shapes, 0

    def describe(self) -> ModelDeclaration:
        return ModelDeclaration("linear", self.shapes, f"vision-{self.index}", "lm", 5, 6)

    def train(self, round_id, params, *, prox_mu=0.0):
        self.trained += 1
        return super().train(round_id, params, prox_mu=prox_mu)


def test_a_silo_whose_projector_does_not_fit_is_refused_before_any_training_with_one_line_to_both():
    fed = toy(3)
    good = {k: tuple(v.shape) for k, v in fed.init_params().items()}
    bad = {k: (v[0] + 2, *v[1:]) for k, v in good.items()}
    trainers = {}

    def make(fed_, i):
        trainers[i] = _Declaring(fed_, i, bad if i == 2 else good)
        return trainers[i]

    res = run_federation(3, 1, fed=fed, make_trainer=make,
                         policy_overrides={"roster_wait_s": 10.0, "max_failed_rounds": 1})
    assert isinstance(res.error, RoundAborted), res.error
    msg = str(res.error)
    assert "silo-2" in msg and "vision-2" in msg and "aggregator init" in msg
    refused = res.silos["silo-2"]
    assert isinstance(refused, ConfigError) and "refused silo silo-2" in str(refused)
    assert "x".join(map(str, bad["weight"])) in str(refused) and "x".join(map(str, good["weight"])) in str(refused)
    assert all(t.trained == 0 for t in trainers.values())  # refused before any round started
    assert not any(e["event"] == "round_started" for e in res.events)


def test_a_declared_silo_refuses_a_round_whose_projector_does_not_fit_before_training():
    """An aggregator that skips the handshake (an older one) still cannot make the silo train."""
    fed = toy(3)
    good = {k: tuple(v.shape) for k, v in fed.init_params().items()}
    bad = {k: (v[0] + 1, *v[1:]) for k, v in good.items()}
    from fedalign.aggregator.rounds import Coordinator

    trainers = []

    def make(fed_, i):
        trainers.append(_Declaring(fed_, i, bad if i == 0 else good))
        return trainers[-1]

    orig = Coordinator._on_declaration
    Coordinator._on_declaration = lambda self, silo, m: None  # no handshake on this side
    try:
        res = run_federation(3, 1, fed=fed, make_trainer=make,
                             policy_overrides={"max_failed_rounds": 1, "heartbeat_timeout_s": 1.0})
    finally:
        Coordinator._on_declaration = orig
    trainers.sort(key=lambda t: t.index)
    err = res.silos["silo-0"]
    assert isinstance(err, ConfigError) and "nothing was trained" in str(err)
    assert trainers[0].trained == 0


def test_the_aggregators_console_lines_do_not_wrap_when_redirected(capsys):
    from fedalign.aggregator.app import _Progress

    names = [f"hospital-with-a-long-name-{i}" for i in range(4)]
    p = _Progress(1, 0, quiet=False)
    p.event("waiting_for_silos", {"round": 0, "connected": names[:2], "missing": names[2:], "refused": [],
                                  "need": 3, "seconds_left": 590})
    err = capsys.readouterr().err
    (line,) = [l for l in err.splitlines() if "waiting for silos" in l]
    assert len(line) > 120 and line.endswith("(run.roster_wait_s)") and names[3] in line


class _SpentAfter(ToyTrainer):
    """Data for one round only: the second raises DataError, as a spent ShardCursor does."""

    def train(self, round_id, params, *, prox_mu=0.0):
        from fedalign.protocol.errors import DataError

        if round_id >= 1:
            raise DataError("cursor.json: all 32 records used in 1 pass(es); one-pass data is spent")
        return super().train(round_id, params, prox_mu=prox_mu)


def test_a_silo_whose_data_runs_out_keeps_the_rounds_it_took_part_in():
    fed = toy(4)
    res = run_federation(4, 3, fed=fed, make_trainer=lambda f, i: (_SpentAfter if i == 3 else ToyTrainer)(f, i),
                         policy_overrides={"max_failed_rounds": 1})
    assert res.error is None, res.error
    out = res.silos["silo-3"]
    assert out.reason == "data spent" and out.rounds_done == 1 and out.committed == [0]
    assert out.params is not None  # θ_1: round 0 with this silo in it, to evaluate and export
    init = fed.init_params()
    assert any(not torch.equal(out.params[k], init[k]) for k in init)  # round 0's update is in it
