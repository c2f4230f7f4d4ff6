"""One silo cannot grow the aggregator's event log without bound by leaving and reconnecting
(issue #26 item 7): per silo at most CHURN_EVENTS_MAX silo_connected/silo_left lines per
CHURN_WINDOW_S of the coordinator's clock, the rest counted in one events_suppressed line."""

from __future__ import annotations

from fedalign.aggregator import rounds
from fedalign.aggregator.checkpoint import RunState
from fedalign.aggregator.rounds import Coordinator, RoundPolicy
from fedalign.crypto.identity import generate_identity
from fedalign.fedcmp.strategies import make_strategy
from fedalign.compliance.eventlog import EventLog, read_events
from fedalign.protocol.messages import Heartbeat, LeaveNotice, Stage
from fedalign.protocol.wire import Envelope
import torch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedTransport:
    """Hands out ``script`` one envelope per recv, the clock moving ``step`` s each; then None."""

    def __init__(self, clock: Clock, script, step: float) -> None:
        self.clock, self.script, self.step, self.sent = clock, iter(script), step, 0

    def recv(self, timeout_s):
        env = next(self.script, None)
        self.clock.now += self.step if env is not None else timeout_s
        return env

    def send(self, to, env):
        self.sent += 1
        return 0


def _pairs(silo: str, n: int):
    for _ in range(n):
        yield Envelope(-1, -1, -1, silo, LeaveNotice("bye"))
        yield Envelope(-1, -1, -1, silo, Heartbeat(Stage.JOIN, -1))


def _coordinator(tmp_path, script, step, *, rounds_=0):
    clock = Clock()
    strat = make_strategy("fedavg")
    params = {"weight": torch.zeros(2, 2)}
    state = RunState(0, params, strat.init_public(params), strat.init_server_state(params))
    log = EventLog(tmp_path / "events.jsonl", source="aggregator", clock=clock)
    t = ScriptedTransport(clock, script, step)
    c = Coordinator(t, strat, strategy_name="fedavg", strategy_options={},
                    identities={"silo-0": generate_identity().public_hex, "silo-1": generate_identity().public_hex},
                    policy=RoundPolicy(rounds=rounds_, heartbeat_timeout_s=5, roster_wait_s=5), state=state,
                    events=log, clock=clock)
    return c, clock, log


def _churn_lines(ev):
    return [e for e in ev if e["event"] in ("silo_connected", "silo_left", "events_suppressed")]


def test_ten_thousand_leave_heartbeat_pairs_write_under_100_lines(tmp_path):
    # 20,000 messages, 10 ms apart: 200 s of the coordinator's clock, four 60 s windows
    c, clock, log = _coordinator(tmp_path, _pairs("silo-0", 10_000), step=0.01)
    assert c._next(deadline=clock.now + 10_000) is None
    log.close()
    ev = _churn_lines(read_events(tmp_path / "events.jsonl"))
    assert len(ev) < 100, len(ev)
    written = sum(e["event"] != "events_suppressed" for e in ev)
    suppressed = [e for e in ev if e["event"] == "events_suppressed"]
    assert suppressed and all(e["silo"] == "silo-0" for e in suppressed)
    assert written + sum(e["count"] for e in suppressed) == 20_000  # every one accounted for
    assert written <= rounds.CHURN_EVENTS_MAX * 4


def test_the_count_of_an_open_window_is_written_when_the_run_ends(tmp_path):
    c, clock, log = _coordinator(tmp_path, _pairs("silo-0", 100), step=0.001)  # 0.2 s: one window
    c.run()  # rounds=0: straight to RunEnd, which reads the script
    log.close()
    ev = read_events(tmp_path / "events.jsonl")
    churn = _churn_lines(ev)
    assert [e["event"] for e in churn].count("events_suppressed") == 1
    sup = next(e for e in churn if e["event"] == "events_suppressed")
    assert sup["count"] == 200 - rounds.CHURN_EVENTS_MAX
    assert [e["event"] for e in ev].index("events_suppressed") < [e["event"] for e in ev].index("run_finished")


def test_a_quiet_silo_loses_no_lines(tmp_path):
    c, clock, log = _coordinator(tmp_path, _pairs("silo-1", 3), step=1.0)
    c._next(deadline=clock.now + 100)
    log.close()
    ev = _churn_lines(read_events(tmp_path / "events.jsonl"))
    assert [e["event"] for e in ev] == ["silo_left", "silo_connected"] * 3


class JunkTransport(ScriptedTransport):
    """Hands out ``script``; an exception in it is raised by recv, as the wire raises a refused frame."""

    def recv(self, timeout_s):
        env = next(self.script, None)
        self.clock.now += self.step if env is not None else timeout_s
        if isinstance(env, Exception):
            raise env
        return env


def test_a_flood_of_refused_frames_is_counted_not_written(tmp_path):
    from fedalign.protocol.errors import WireFormatError

    flood = (WireFormatError(f"frame {i}: not msgpack") for i in range(10_000))
    c, clock, log = _coordinator(tmp_path, flood, step=0.01)
    c.t = JunkTransport(clock, flood, 0.01)
    assert c._next(deadline=clock.now + 10_000) is None
    c._flush_churn(final=True)
    log.close()
    ev = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] in ("message_dropped", "events_suppressed")]
    assert len(ev) < 100, len(ev)
    suppressed = [e for e in ev if e["event"] == "events_suppressed"]
    assert suppressed and all(e["silo"] is None and set(e["events"]) == {"message_dropped"} for e in suppressed)
    assert sum(e["event"] == "message_dropped" for e in ev) + sum(e["count"] for e in suppressed) == 10_000
