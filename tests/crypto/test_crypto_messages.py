"""Every message a run produces carries only wire types and its full envelope."""

import dataclasses

import numpy as np
import pytest

import fedalign.crypto.messages as M
from fedalign.crypto import MESSAGE_TYPES, SecureSumConfig, check_wire_types, secure_sum_inprocess


def test_registry_covers_every_message_class():
    classes = {c for c in vars(M).values() if isinstance(c, type) and issubclass(c, M.Message) and c is not M.Message}
    assert set(MESSAGE_TYPES.values()) == classes
    for name, cls in MESSAGE_TYPES.items():
        assert cls.__name__ == name and dataclasses.is_dataclass(cls)
        assert {"round_id", "instance_id", "stage", "sender"} <= {f.name for f in dataclasses.fields(cls)}
        assert isinstance(cls.STAGE, M.Stage)


@pytest.mark.parametrize("mode", ["secagg", "ckks"])
def test_every_message_of_a_run_is_wire_clean(mode, monkeypatch):
    seen = []
    real = check_wire_types

    def spy(msg):
        real(msg)
        seen.append(msg)

    monkeypatch.setattr("fedalign.crypto.inprocess.check_wire_types", spy)
    cfg = SecureSumConfig(mode=mode, threshold=2, clip=1.0, allow_insecure_plaintext=False)
    secure_sum_inprocess({f"s{i}": {"x": np.zeros(3, np.float32)} for i in range(3)}, cfg, round_id=4, instance_id=2)
    assert {type(m).__name__ for m in seen} >= ({"KeyAdvertisement", "UnmaskResponse"} if mode == "secagg" else {"CkksInput"})
    for m in seen:
        assert (m.round_id, m.instance_id, m.stage) == (4, 2, type(m).STAGE.value)


def test_check_wire_types_rejects_objects():
    bad = M.ConsistencySignature(round_id=0, instance_id=0, sender="a", signature=object())
    with pytest.raises(TypeError, match="signature"):
        check_wire_types(bad)


def _msgpack_round_trip(msg):
    """What a transport does: msgpack header (arrays as ext refs) + raw array frames."""
    import msgpack

    frames = []

    def default(obj):
        if isinstance(obj, np.ndarray):
            frames.append(np.ascontiguousarray(obj).tobytes())
            spec = msgpack.packb([obj.dtype.str, list(obj.shape), len(frames) - 1])
            return msgpack.ExtType(1, spec)
        raise TypeError(type(obj).__name__)

    head = msgpack.packb([type(msg).__name__, msg.fields()], default=default)

    def ext_hook(code, data):
        dt, shape, i = msgpack.unpackb(data)
        return np.frombuffer(frames[i], dtype=np.dtype(dt)).reshape(shape).copy()

    name, fields = msgpack.unpackb(head, use_list=False, raw=False, strict_map_key=False, ext_hook=ext_hook)
    return MESSAGE_TYPES[name](**fields)


@pytest.mark.parametrize("mode", ["secagg", "ckks"])
def test_protocol_runs_over_msgpack(mode, monkeypatch):
    monkeypatch.setattr("fedalign.crypto.inprocess._over_the_wire", _msgpack_round_trip)
    cfg = SecureSumConfig(mode=mode, threshold=2, clip=1.0, allow_insecure_plaintext=False)
    rng = np.random.default_rng(3)
    inputs = {f"s{i}": {"x": rng.uniform(-1, 1, (2, 3)).astype(np.float32), "y": rng.uniform(-1, 1, 4)} for i in range(3)}
    res = secure_sum_inprocess(inputs, cfg, drop={"s1": "unmask" if mode == "secagg" else "encrypted_input"})
    for name in ("x", "y"):
        want = sum(inputs[s][name].astype(np.float64) for s in res.included)
        assert np.abs(res.sums[name] - want).max() < 1e-5
