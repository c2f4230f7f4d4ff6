"""The decoder is total: whatever bytes an allowlisted peer sends, the only error is WireFormatError,
and every field a message is built from has the type its dataclass declares (issue #10)."""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedalign.protocol.errors import WireFormatError
from fedalign.protocol.messages import (
    Heartbeat, LeaveNotice, RoundEnd, RoundStart, RunEnd, Stage, SumScheme, SumStart, UpdateReady, wire_registry,
)
from fedalign.protocol.wire import Envelope, decode, encode
from fedalign.crypto import messages as cm

REG = wire_registry()


def _frames(msg, sender="silo-a"):
    return [bytes(f) for f in encode(Envelope(3, 1, 0, sender, msg))]


def _tamper(frames, fn):
    h = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    fn(h)
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


def _round_start():
    return RoundStart(0, {"w": np.ones((4, 4), np.float32)}, {}, ("a", "b"), bytes(32), "fedavg", {"rank": 2},
                      1, 1.0, ())


CORPUS = [
    _frames(_round_start(), "aggregator"),
    _frames(Heartbeat(Stage.TRAIN, 2)),
    _frames(UpdateReady(2, 0.5)),
    _frames(SumStart(2, 0, 4, SumScheme.SECAGG, ("a", "b", "c"), 2, 16.0, 0, 8192, {"u": np.ones(3)}), "aggregator"),
    _frames(RoundEnd(2, True, "committed", ("a",)), "aggregator"),
    _frames(RunEnd(3, {"w": np.zeros((2, 2), np.float32)}, "done"), "aggregator"),
    _frames(LeaveNotice("bye")),
    _frames(cm.KeyAdvertisement(round_id=2, instance_id=4, sender="a", cipher_pk=b"c" * 32, mask_pk=b"m" * 32,
                                signature=b"s" * 64), "a"),
    _frames(cm.MaskedInput(round_id=2, instance_id=4, sender="a", names=("w",), shapes=((3,),),
                           masked=np.arange(3, dtype=np.uint32)), "a"),
    _frames(cm.UnmaskResponse(round_id=2, instance_id=4, sender="a", self_seed_shares={"b": b"x" * 66},
                              mask_key_shares={}), "a"),
]


def test_corpus_decodes():
    for fr in CORPUS:
        assert decode(fr, REG) is not None


# ---- arrays: declared sizes are checked before allocation, zero-size ones included ------


@pytest.mark.parametrize("dims", [[0, 1 << 62], [0, 1 << 40, 1 << 40], [1 << 33, 0], [0, 2**64 - 1]])
def test_zero_size_array_with_huge_dimension_is_refused(dims):
    fr = _frames(_round_start(), "aggregator")
    bad = _tamper(fr, lambda h: h["spec"][0].__setitem__(1, dims))
    with pytest.raises(WireFormatError, match="array shape .* over the"):
        decode([bad[0], b""], REG)


# ---- nesting depth -----------------------------------------------------------------------


def test_nesting_depth_is_bounded():
    deep: object = 1
    for _ in range(40):  # msgpack's own limit is far deeper; 40 levels are no protocol's need
        deep = [deep]
    fr = _frames(_round_start(), "aggregator")
    with pytest.raises(WireFormatError, match="nested deeper than 32"):
        decode(_tamper(fr, lambda h: h["body"].__setitem__("strategy_options", {"x": deep})), REG)
    # and far deeper than Python's recursion limit: still a wire error, never a RecursionError
    fr = _frames(LeaveNotice("PLACEHOLDER"))
    deep = fr[0].replace(msgpack.packb("PLACEHOLDER"), b"\x91" * 200_000 + b"\xc0")
    with pytest.raises(WireFormatError):
        decode([deep], REG)


# ---- every field type-checked (values msgpack decodes fine but no field expects) ----------


@pytest.mark.parametrize("value", ["0.5", float("nan"), float("inf"), None, [0.5], True])
def test_epsilon_must_be_a_finite_number(value):
    fr = _frames(UpdateReady(2, 0.5))
    with pytest.raises(WireFormatError, match="UpdateReady.epsilon"):
        decode(_tamper(fr, lambda h: h["body"].__setitem__("epsilon", value)), REG)


def test_negative_epsilon_is_refused():
    with pytest.raises(WireFormatError, match="UpdateReady.epsilon must be a finite number >= 0"):
        UpdateReady(1, -1.0)


def test_an_array_as_crypto_round_id_is_refused():
    fr = _frames(cm.KeyAdvertisement(round_id=2, instance_id=4, sender="a", cipher_pk=b"c" * 32,
                                     mask_pk=b"m" * 32, signature=b"s" * 64), "a")
    arr = np.zeros(3, np.int64)
    h = msgpack.unpackb(fr[0], raw=False)
    h["body"]["round_id"] = msgpack.ExtType(1, b"\x00\x00\x00\x00")
    h["spec"] = [["<i8", [3]]]
    with pytest.raises(WireFormatError, match=r"KeyAdvertisement.round_id: expected an int, got ndarray"):
        decode([msgpack.packb(h, use_bin_type=True), arr.tobytes()], REG)


@pytest.mark.parametrize("value", [("x",), {"a": 1}, 7, b"bytes", None])
def test_leave_reason_must_be_a_str(value):
    fr = _frames(LeaveNotice("bye"))
    with pytest.raises(WireFormatError, match="LeaveNotice.reason"):
        decode(_tamper(fr, lambda h: h["body"].__setitem__("reason", value)), REG)


@pytest.mark.parametrize("field,value,needle", [
    ("clip", float("nan"), "SumStart.clip"),
    ("clip", -1.0, "SumStart.clip must be a finite number > 0"),
    ("ckks_poly_modulus", 4096, "SumStart.ckks_poly_modulus must be one of"),
    ("threshold", True, "SumStart.threshold"),
    ("participants", ("a", 3), r"SumStart.participants\[1\]: expected str"),
    ("scheme", ["secagg"], "SumStart.scheme: expected str"),
    ("scheme", "rot13", r"SumStart.scheme must be one of \['ckks', 'plain', 'secagg'\], got str 'rot13'"),
])
def test_sum_start_fields(field, value, needle):
    fr = CORPUS[3]
    with pytest.raises(WireFormatError, match=needle):
        decode(_tamper(fr, lambda h: h["body"].__setitem__(field, value)), REG)


@pytest.mark.parametrize("field,value,needle", [
    ("train_deadline_s", float("inf"), "RoundStart.train_deadline_s"),
    ("strategy", 5, "RoundStart.strategy"),
    ("previous_survivors", "ab", "RoundStart.previous_survivors"),
    ("n_phases", 1 << 40, "RoundStart.n_phases"),
    ("strategy_options", {"x": (1.0, float("nan"))}, r"RoundStart.strategy_options\[.x.\]: expected finite numbers"),
])
def test_round_start_fields(field, value, needle):
    with pytest.raises(WireFormatError, match=needle):
        decode(_tamper(CORPUS[0], lambda h: h["body"].__setitem__(field, value)), REG)


@pytest.mark.parametrize("field,value", [("keys", ("a",)), ("keys", 3)])
def test_crypto_container_fields_are_type_checked(field, value):
    fr = _frames(cm.KeyRoster(round_id=1, instance_id=2, sender="aggregator", keys={"a": (b"1", b"2", b"3")}),
                 "aggregator")
    with pytest.raises(WireFormatError, match=f"KeyRoster.{field}: expected a map"):
        decode(_tamper(fr, lambda h: h["body"].__setitem__(field, value)), REG)


def test_body_keys_of_mixed_types_are_a_wire_error():
    # sorting {str, int} keys for the error message used to raise TypeError
    fr = _frames(LeaveNotice("bye"))
    with pytest.raises(WireFormatError, match="unexpected fields"):
        decode(_tamper(fr, lambda h: h["body"].update({1: "x", "zz": 2})), REG)


def test_error_messages_do_not_echo_large_attacker_values():
    fr = _frames(LeaveNotice("bye"))
    with pytest.raises(WireFormatError) as ei:
        decode(_tamper(fr, lambda h: h.__setitem__("type", "X" * 1_000_000)), REG)
    assert len(str(ei.value)) < 300


@dataclass(frozen=True)
class _Fragile:
    key: str

    def __post_init__(self) -> None:
        {}[self.key]  # a validator with a bug: KeyError


def test_a_validator_bug_surfaces_as_a_wire_error():
    head = msgpack.packb({"v": 1, "type": "_Fragile", "round": 0, "instance": 0, "phase": 0, "sender": "a",
                          "spec": [], "body": {"key": "k"}}, use_bin_type=True)
    with pytest.raises(WireFormatError, match="_Fragile"):
        decode([head], {"_Fragile": _Fragile})


# ---- property: mutated captured frames never raise anything but WireFormatError ---------

_hostile = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=8) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def _mutated(draw):
    frames = list(draw(st.sampled_from(CORPUS)))
    kind = draw(st.sampled_from(["field", "envelope", "spec", "keys", "bytes", "frames"]))
    if kind == "bytes":
        head = bytearray(frames[0])
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(head) - 1))
            head[i] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(head)))
        frames[0] = bytes(head[: cut or len(head)])
        return frames
    h = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    if kind == "field":
        h["body"][draw(st.sampled_from(sorted(h["body"])))] = draw(_hostile)
    elif kind == "envelope":
        h[draw(st.sampled_from(["v", "type", "round", "instance", "phase", "sender", "spec", "body"]))] = draw(_hostile)
    elif kind == "spec" and h["spec"]:
        i = draw(st.integers(0, len(h["spec"]) - 1))
        dims = draw(st.lists(st.sampled_from([1, 3, 1 << 40, 2**63, 2**64 - 1, -1]), max_size=3))
        if draw(st.booleans()):  # zero-size: no bytes to send, whatever the other dimensions
            dims, frames[1 + i] = [0, *dims], b""
        h["spec"][i] = [draw(st.sampled_from(["<f4", "<u4", "|O", 3])), dims]
    elif kind == "keys":
        h["body"].update(draw(st.dictionaries(st.text(max_size=3) | st.integers(0, 3), _hostile, min_size=1, max_size=3)))
    elif kind == "frames":
        frames = frames[:-1] if len(frames) > 1 else [*frames, b"\x00" * 4]
    return [msgpack.packb(h, use_bin_type=True), *frames[1:]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=_mutated())
def test_decode_is_total_on_mutated_frames(frames):
    try:
        env = decode(frames, REG, max_bytes=1 << 24)
    except WireFormatError:
        return
    assert isinstance(env, Envelope)


@pytest.mark.parametrize("value", [[None] * 70_000, [[0]] * 40_000, {"k%d" % i: i for i in range(40_000)}])
def test_element_count_is_bounded(value):
    # a 4 MiB header may hold millions of tiny values; every later pass would walk them all
    with pytest.raises(WireFormatError, match="max_array_len|max_map_len|more than 65536 values"):
        decode(_tamper(CORPUS[0], lambda h: h["body"].__setitem__("strategy_options", {"x": value})), REG)


def test_element_budget_covers_nested_messages():
    # each nested message is under the limit; together they are not
    body = msgpack.unpackb(_frames(RoundStart(0, {}, {}, ("a",), bytes(32), "s", {}, 1, 1.0, ()))[0],
                           raw=False)["body"]
    body["strategy_options"] = {"pad": [None] * 30_000}
    inner = msgpack.packb(["RoundStart", body], use_bin_type=True)
    nested = tuple(msgpack.ExtType(2, inner) for _ in range(3))
    with pytest.raises(WireFormatError, match="more than 65536 values"):
        decode(_tamper(CORPUS[0], lambda h: h["body"].__setitem__("roster", nested)), REG)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_arrays_must_be_finite(bad):
    # a NaN in a decrypted sum or in θ would poison every silo's next round
    vals = np.ones(4)
    vals[2] = bad
    frames = _frames(cm.CkksDecryptedSum(round_id=1, instance_id=2, sender="a", values=vals), "a")
    with pytest.raises(WireFormatError, match=r"array 0 \(<f8 \[4\]\): expected finite values"):
        decode(frames, REG)


@pytest.mark.parametrize("field,value,needle", [
    ("self_seed_shares", {"b": "not bytes"}, r"UnmaskResponse.self_seed_shares\['b'\]: expected bytes, got str"),
    ("self_seed_shares", {7: b"x" * 66}, r"UnmaskResponse.self_seed_shares key: expected str, got int"),
    ("mask_key_shares", {"c": (b"x",)}, r"UnmaskResponse.mask_key_shares\['c'\]: expected bytes, got tuple"),
])
def test_crypto_fields_are_checked_element_by_element(field, value, needle):
    fr = _frames(cm.UnmaskResponse(round_id=2, instance_id=4, sender="a", self_seed_shares={"b": b"x" * 66},
                                   mask_key_shares={}), "a")
    with pytest.raises(WireFormatError, match=needle):
        decode(_tamper(fr, lambda h: h["body"].__setitem__(field, value)), REG)


def test_crypto_shapes_must_be_int_tuples():
    fr = CORPUS[8]  # MaskedInput
    with pytest.raises(WireFormatError, match=r"MaskedInput.shapes\[0\]\[0\]: expected an int, got float"):
        decode(_tamper(fr, lambda h: h["body"].__setitem__("shapes", ((3.0,),))), REG)
