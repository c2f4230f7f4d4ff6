"""ZeroMQ transport on loopback: CURVE on, ZAP allowlist, pinned server key, insecure mode gated."""

from __future__ import annotations

import numpy as np
import pytest

from fedalign.aggregator.server import ZmqServer
from fedalign.protocol.errors import InsecureModeRefused, ProtocolError, WireFormatError
from fedalign.protocol.keys import generate
from fedalign.protocol.messages import MESSAGE_TYPES, Heartbeat, Stage, SumScheme, SumStart
from fedalign.protocol.transport import AGGREGATOR
from fedalign.protocol.wire import Envelope
from fedalign.silo.client import ZmqClient

EP = "tcp://127.0.0.1:*"


def _blob(x):
    return SumStart(0, 0, 0, SumScheme.SECAGG, ("a",), 1, 16.0, 0, 8192, {"x": x})


def _recv(t, timeout=5.0):
    env = t.recv(timeout)
    assert env is not None, "nothing arrived"
    return env


@pytest.fixture
def keys():
    return {"agg": generate(), "a": generate(), "b": generate(), "mallory": generate()}


@pytest.fixture
def server(keys):
    s = ZmqServer(EP, keypair=keys["agg"], allowlist={"a": keys["a"].public, "b": keys["b"].public},
                  registry=MESSAGE_TYPES)
    yield s
    s.close()


def _client(server, keys, name, key=None, server_public=None):
    return ZmqClient(server.endpoint, name, keypair=keys[key or name],
                     server_public=server_public or keys["agg"].public, registry=MESSAGE_TYPES)


def test_allowlisted_silos_talk_both_ways(server, keys):
    a, b = _client(server, keys, "a"), _client(server, keys, "b")
    try:
        a.send(Envelope(0, -1, -1, "a", _blob(np.arange(1000, dtype=np.float32))))
        b.send(Envelope(0, -1, -1, "b", Heartbeat(Stage.JOIN, -1)))
        got = {(e := _recv(server)).sender: e for _ in range(2)}
        assert set(got) == {"a", "b"}
        np.testing.assert_array_equal(got["a"].message.public["x"], np.arange(1000, dtype=np.float32))
        server.send("b", Envelope(1, -1, -1, AGGREGATOR, Heartbeat(Stage.TRAIN, 0)))
        env = _recv(b)
        assert env.round == 1 and env.message.stage is Stage.TRAIN
        assert a.recv(0.2) is None  # routed to b only
        assert server.traffic.received["a"] > 4000
    finally:
        a.close(), b.close()


def test_unknown_key_is_refused_by_zap(server, keys):
    m = _client(server, keys, "a", key="mallory")  # claims to be "a" with a key nobody listed
    try:
        m.send(Envelope(0, -1, -1, "a", Heartbeat(Stage.JOIN, -1)))
        assert server.recv(1.0) is None
    finally:
        m.close()


def test_wrong_pinned_server_key_never_connects(server, keys):
    a = _client(server, keys, "a", server_public=generate().public)
    try:
        a.send(Envelope(0, -1, -1, "a", Heartbeat(Stage.JOIN, -1)))
        assert server.recv(1.0) is None
    finally:
        a.close()


def test_silo_cannot_impersonate_another(server, keys):
    a = _client(server, keys, "a")
    try:
        a.send(Envelope(0, -1, -1, "b", Heartbeat(Stage.JOIN, -1)))
        with pytest.raises(ProtocolError, match="claims sender 'b'.*authenticated as 'a'"):
            _recv(server)
    finally:
        a.close()


def test_plaintext_needs_the_explicit_insecure_flag(keys):
    with pytest.raises(InsecureModeRefused):
        ZmqServer(EP, keypair=None, allowlist={}, registry=MESSAGE_TYPES)
    with pytest.raises(InsecureModeRefused):
        ZmqClient("tcp://127.0.0.1:1", "a", keypair=None, server_public=None, registry=MESSAGE_TYPES)
    with pytest.warns(UserWarning, match="INSECURE"):
        s = ZmqServer(EP, keypair=None, allowlist={"a": ""}, registry=MESSAGE_TYPES, allow_insecure_plaintext=True)
    try:
        with pytest.warns(UserWarning, match="INSECURE"):
            c = ZmqClient(s.endpoint, "a", keypair=None, server_public=None, registry=MESSAGE_TYPES,
                          allow_insecure_plaintext=True)
        c.send(Envelope(0, -1, -1, "a", Heartbeat(Stage.JOIN, -1)))
        assert _recv(s).sender == "a"
        c.close()
    finally:
        s.close()


def test_oversized_message_is_dropped_by_the_socket(keys):
    s = ZmqServer(EP, keypair=keys["agg"], allowlist={"a": keys["a"].public}, registry=MESSAGE_TYPES,
                  max_bytes=1 << 10)
    a = ZmqClient(s.endpoint, "a", keypair=keys["a"], server_public=keys["agg"].public, registry=MESSAGE_TYPES)
    try:
        a.send(Envelope(0, -1, -1, "a", _blob(np.zeros(8 << 20, np.uint8))))  # > MAXMSGSIZE
        assert s.recv(1.0) is None
        # under the socket's frame cap but over the declared-size cap: refused by the decoder
        a.send(Envelope(0, -1, -1, "a", _blob(np.zeros(2 << 20, np.uint8))))
        with pytest.raises(WireFormatError, match="over the 1024 limit"):
            _recv(s)
        # the socket reconnects and a small message goes through afterwards
        a.send(Envelope(0, -1, -1, "a", Heartbeat(Stage.JOIN, -1)))
        assert _recv(s).message.stage is Stage.JOIN
    finally:
        a.close(), s.close()
