"""The in-memory transport and CURVE key files (the zmq-free parts of the transport seam)."""

from __future__ import annotations

import stat

import numpy as np
import pytest
import zmq
import zmq.auth

from fedalign.protocol.errors import ConfigError, ProtocolError
from fedalign.protocol.keys import generate, load_keypair, load_public, write_keypair, z85_decode, z85_encode
from fedalign.protocol.messages import MESSAGE_TYPES, Heartbeat, Stage, SumScheme, SumStart
from fedalign.protocol.transport import AGGREGATOR, InMemoryNetwork
from fedalign.protocol.wire import Envelope


def _blob(x):
    return SumStart(0, 0, 0, SumScheme.SECAGG, ("a",), 1, 16.0, 0, 8192, {"x": x})


def test_in_memory_delivers_both_ways_and_counts_bytes():
    net = InMemoryNetwork(MESSAGE_TYPES)
    srv, a = net.server(), net.client("a")
    n = a.send(Envelope(0, -1, -1, "a", _blob(np.ones(10, np.float32))))
    env = srv.recv(1.0)
    assert env.sender == "a" and np.all(env.message.public["x"] == 1)
    assert srv.traffic.received["a"] == n and n > 40
    srv.send("a", Envelope(0, -1, -1, AGGREGATOR, Heartbeat(Stage.JOIN, -1)))
    assert a.recv(1.0).message.stage is Stage.JOIN
    assert srv.recv(0.01) is None


def test_in_memory_refuses_forged_sender():
    net = InMemoryNetwork(MESSAGE_TYPES)
    srv, a = net.server(), net.client("a")
    a.send(Envelope(0, -1, -1, "b", Heartbeat(Stage.JOIN, -1)))
    with pytest.raises(ProtocolError, match="claims sender 'b'.*authenticated as 'a'"):
        srv.recv(1.0)


def test_disconnected_client_is_silent():
    net = InMemoryNetwork(MESSAGE_TYPES)
    srv, a = net.server(), net.client("a")
    net.disconnect("a")
    a.send(Envelope(0, -1, -1, "a", Heartbeat(Stage.JOIN, -1)))
    srv.send("a", Envelope(0, -1, -1, AGGREGATOR, Heartbeat(Stage.JOIN, -1)))
    assert srv.recv(0.01) is None and a.recv(0.01) is None


def test_z85_matches_zmq_and_rfc_vector():
    raw = bytes([0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B])
    assert z85_encode(raw) == "HelloWorld"  # the RFC 32 test vector
    rng = np.random.default_rng(1)
    for _ in range(20):
        b = rng.bytes(32)
        assert z85_encode(b) == zmq.utils.z85.encode(b).decode()
        assert z85_decode(z85_encode(b)) == b
    with pytest.raises(ValueError):
        z85_decode("Hello~orld")


def test_generated_public_key_is_the_curve25519_public_of_the_secret():
    kp = generate()
    # an independent implementation (libzmq/libsodium) derives the same public key
    assert zmq.curve_public(kp.secret.encode()).decode() == kp.public
    assert "secret" not in repr(kp) or "<hidden>" in repr(kp)
    assert kp.secret not in repr(kp)


def test_key_files_are_0600_readable_by_zmq_and_not_overwritten(tmp_path):
    pub, sec = write_keypair(tmp_path, "hospital-a", role="silo")
    for p in (pub, sec):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    zpub, zsec = zmq.auth.load_certificate(sec)
    kp = load_keypair(sec)
    assert zpub.decode() == kp.public and zsec.decode() == kp.secret
    assert load_public(pub) == kp.public and zmq.auth.load_certificate(pub)[1] is None
    with pytest.raises(ConfigError, match="exists"):
        write_keypair(tmp_path, "hospital-a", role="silo")
    write_keypair(tmp_path, "hospital-a", role="silo", overwrite=True)
    assert load_public(pub) != kp.public


def test_key_loading_errors_name_file_and_problem(tmp_path):
    pub, sec = write_keypair(tmp_path, "s", role="silo")
    with pytest.raises(ConfigError, match="no secret-key"):
        load_keypair(pub)
    sec.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 644"):
        load_keypair(sec)
    bad = tmp_path / "bad.key"
    bad.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(ConfigError, match=r"bad.key:2: public-key"):
        load_public(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_public(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="key name"):
        write_keypair(tmp_path, "../evil", role="silo")
