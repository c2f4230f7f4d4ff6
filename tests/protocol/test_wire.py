"""The wire format: round trips of ours and nested messages, and every rejection before allocation."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedalign.protocol.errors import WireFormatError
from fedalign.protocol.messages import MESSAGE_TYPES, RoundStart, Stage, Heartbeat, SumStart, SumScheme
from fedalign.protocol.wire import Envelope, decode, encode, peek_header


class Colour(enum.StrEnum):
    RED = "red"


@dataclass(frozen=True)
class Share:
    to: int
    blob: bytes
    vec: np.ndarray


@dataclass(frozen=True)
class Bundle:
    shares: tuple[Share, ...]
    by_id: dict
    colour: Colour
    note: str | None


REG = {**MESSAGE_TYPES, "Share": Share, "Bundle": Bundle}


def _env(msg, **kw):
    return Envelope(kw.get("round", 3), kw.get("instance", 1), kw.get("phase", 0), kw.get("sender", "silo-a"), msg)


def _bytes(frames):
    return [bytes(f) for f in frames]


def test_round_start_round_trip_keeps_arrays_and_fields():
    rng = np.random.default_rng(0)
    params = {"0.weight": rng.standard_normal((4, 3)).astype(np.float32), "0.bias": np.zeros(4, np.float32)}
    msg = RoundStart(2, params, {"q": rng.standard_normal((3, 2))}, ("a", "b", "c"), bytes(range(32)), "fedcmp", {"rank": 4}, 2, 60.0, ("a",))
    env = decode(_bytes(encode(_env(msg))), REG)
    assert env.round == 3 and env.instance == 1 and env.phase == 0 and env.sender == "silo-a"
    out = env.message
    assert isinstance(out, RoundStart) and out.roster == ("a", "b", "c") and out.seed == msg.seed
    for k in params:
        np.testing.assert_array_equal(out.params[k], params[k])
        assert out.params[k].dtype == params[k].dtype
    assert out.public["q"].dtype == np.float64


def test_nested_dataclasses_enums_and_int_keys_round_trip():
    sh = (Share(1, b"\x00\x01", np.arange(5, dtype=np.uint32)), Share(2, b"", np.zeros((0, 3), np.int64)))
    msg = Bundle(sh, {7: b"x", 9: np.ones(2, np.uint64)}, Colour.RED, None)
    out = decode(_bytes(encode(_env(msg))), REG).message
    assert out.colour is Colour.RED and out.note is None
    assert out.shares[0].to == 1 and out.shares[1].vec.shape == (0, 3)
    np.testing.assert_array_equal(out.shares[0].vec, np.arange(5, dtype=np.uint32))
    np.testing.assert_array_equal(out.by_id[9], np.ones(2, np.uint64))


def test_enum_fields_are_restored_and_validated():
    out = decode(_bytes(encode(_env(Heartbeat(Stage.SUM, 4)))), REG).message
    assert out.stage is Stage.SUM
    frames = _bytes(encode(_env(Heartbeat(Stage.SUM, 4))))
    h = msgpack.unpackb(frames[0], raw=False)
    h["body"]["stage"] = "dancing"
    with pytest.raises(WireFormatError, match="Stage"):
        decode([msgpack.packb(h, use_bin_type=True)], REG)


def test_big_endian_input_is_sent_little_endian():
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    out = decode(_bytes(encode(_env(SumStart(0, 0, 0, SumScheme.SECAGG, ("a",), 1, 16.0, 0, 8192, {"x": a})))), REG).message
    assert out.public["x"].dtype == np.dtype("<f4")
    np.testing.assert_array_equal(out.public["x"], a)


def _tamper(frames, fn):
    h = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    fn(h)
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


@pytest.fixture
def frames():
    msg = RoundStart(0, {"w": np.ones((4, 4), np.float32)}, {}, ("a",), bytes(32), "fedavg", {}, 1, 1.0, ())
    return _bytes(encode(_env(msg)))


def test_rejects_unknown_type(frames):
    with pytest.raises(WireFormatError, match="unknown message type"):
        decode(_tamper(frames, lambda h: h.update(type="Exploit")), REG)


def test_rejects_wrong_version(frames):
    with pytest.raises(WireFormatError, match="protocol version"):
        decode(_tamper(frames, lambda h: h.update(v=99)), REG)


def test_rejects_frame_shorter_than_spec(frames):
    with pytest.raises(WireFormatError, match="spec says 64 bytes"):
        decode([frames[0], frames[1][:-4]], REG)


def test_rejects_missing_frame(frames):
    with pytest.raises(WireFormatError, match="declares 1 arrays but 0"):
        decode(frames[:1], REG)


def test_rejects_huge_declared_shape_before_allocating(frames):
    # 2**40 float32s would be 4 TiB: refused from the header alone.
    with pytest.raises(WireFormatError, match="over the"):
        decode(_tamper(frames, lambda h: h["spec"][0].__setitem__(1, [1 << 20, 1 << 20])), REG)


def test_rejects_object_and_unknown_dtypes(frames):
    for dt in ("|O", "<c16", "|V8", "bogus"):
        with pytest.raises(WireFormatError, match="dtype"):
            decode(_tamper(frames, lambda h: h["spec"][0].__setitem__(0, dt)), REG)


def test_rejects_missing_and_extra_fields(frames):
    with pytest.raises(WireFormatError, match="missing fields \\['seed'\\]"):
        decode(_tamper(frames, lambda h: h["body"].pop("seed")), REG)
    with pytest.raises(WireFormatError, match="unexpected fields \\['evil'\\]"):
        decode(_tamper(frames, lambda h: h["body"].update(evil=1)), REG)


def test_rejects_field_validation_failure(frames):
    with pytest.raises(WireFormatError, match="seed must be 32 bytes"):
        decode(_tamper(frames, lambda h: h["body"].update(seed=b"short")), REG)


def test_rejects_garbage_header():
    with pytest.raises(WireFormatError):
        decode([b"\xc1\xff\x00"], REG)
    with pytest.raises(WireFormatError, match="empty"):
        peek_header([])


def test_rejects_unreferenced_frame(frames):
    extra = np.zeros(2, np.float32).tobytes()
    bad = _tamper(frames, lambda h: h["spec"].append(["<f4", [2]]))
    with pytest.raises(WireFormatError, match="not referenced"):
        decode([*bad, extra], REG)


def test_max_bytes_is_enforced(frames):
    with pytest.raises(WireFormatError, match="over the 32 limit"):
        decode(frames, REG, max_bytes=32)


def test_unsupported_value_is_refused_at_encode():
    with pytest.raises(WireFormatError, match="cannot go on the wire"):
        encode(_env(Bundle((), {"f": object()}, Colour.RED, None)))


@settings(max_examples=40, deadline=None)
@given(
    arr=st.sampled_from([np.float32, np.float64, np.int64, np.uint32, np.uint8, np.bool_]).flatmap(
        lambda dt: hnp.arrays(
            dtype=dt,
            shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
            # float arrays on the wire are finite (a NaN or infinity is a WireFormatError)
            elements=hnp.from_dtype(np.dtype(dt), allow_nan=False, allow_infinity=False)
            if np.dtype(dt).kind == "f" else None,
        )
    ),
    rnd=st.integers(0, 2**31),
    name=st.text(min_size=1, max_size=20),
)
def test_any_array_round_trips_bit_exactly(arr, rnd, name):
    msg = SumStart(rnd, 0, 0, SumScheme.SECAGG, (name,), 1, 16.0, 0, 8192, {name: arr})
    out = decode(_bytes(encode(Envelope(rnd, 0, 0, name, msg))), REG)
    got = out.message.public[name]
    assert got.shape == arr.shape and got.dtype == arr.dtype.newbyteorder("<")
    assert got.tobytes() == np.ascontiguousarray(arr).tobytes()


def test_crypto_messages_round_trip_through_the_shared_registry():
    from fedalign.crypto import messages as cm

    from fedalign.protocol.messages import wire_registry

    reg = wire_registry()
    msgs = [
        cm.KeyRoster(round_id=1, instance_id=2, sender="aggregator",
                     keys={"a": (b"\x01" * 32, b"\x02" * 32, b"\x03" * 64)}),
        cm.MaskedInput(round_id=1, instance_id=2, sender="a", names=("w/P", "weight"), shapes=((4, 2), (1,)),
                       masked=np.arange(9, dtype=np.uint32)),
        cm.UnmaskResponse(round_id=1, instance_id=2, sender="a", self_seed_shares={"b": b"s" * 66},
                          mask_key_shares={}),
    ]
    for m in msgs:
        out = decode(_bytes(encode(Envelope(1, 2, 0, m.sender, m))), reg).message
        assert type(out) is type(m) and out.stage == m.stage and out.round_id == 1
        for k, v in m.fields().items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(getattr(out, k), v)
            else:
                assert getattr(out, k) == v, k


def test_deep_nesting_and_garbage_inside_are_wire_errors(frames):
    # 5000 nested one-element arrays, written by hand (msgpack's packer refuses to make them)
    mark = msgpack.packb("PLACEHOLDER")
    head = _tamper(frames, lambda h: h["body"].update(roster="PLACEHOLDER"))[0]
    deep = head.replace(mark, b"\x91" * 5000 + b"\x00")
    with pytest.raises(WireFormatError):
        decode([deep, *frames[1:]], REG)
    bad_ext = msgpack.ExtType(2, b"\xc1\xc1")
    with pytest.raises(WireFormatError, match="nested message"):
        decode(_tamper(frames, lambda h: h["body"].update(roster=(bad_ext,))), REG)
    nested = msgpack.packb(["Share", {"to": 1, "blob": b"", "vec": 0}], use_bin_type=True)
    for _ in range(12):
        nested = msgpack.packb(["Bundle", {"shares": [msgpack.ExtType(2, nested)], "by_id": {}, "colour": "red",
                                           "note": None}], use_bin_type=True)
    msg = Bundle((), {}, Colour.RED, None)
    fr = _bytes(encode(Envelope(0, 0, 0, "a", msg)))
    with pytest.raises(WireFormatError, match="nested deeper"):
        decode(_tamper(fr, lambda h: h["body"].update(shares=(msgpack.ExtType(2, nested),))), REG)
