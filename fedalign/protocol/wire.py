"""The wire format: a msgpack header plus one raw frame per array, for any registered message.

A message is a frozen dataclass of simple fields (None, bool, int, float, str, bytes, enums,
tuples, dicts, nested registered dataclasses) and numpy arrays. :func:`encode` turns an
:class:`Envelope` (round, instance, phase, sender and the message) into frames::

    frame 0   msgpack {v, type, round, instance, phase, sender, spec, body}
    frame 1.. the raw little-endian C-order bytes of each array, in ``spec`` order

Arrays inside ``body`` are msgpack ext references (code 1) to their frame, so no user value
can be mistaken for one. :func:`decode` checks the protocol version, the message type against
a registry, every declared dtype against an allowlist and every declared shape against
``max_bytes`` *before* anything is allocated, and every frame's length against its spec.
No pickle, no code execution: only the registry's dataclasses can come out.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import struct
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np

from fedalign.protocol.errors import WireFormatError

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_HEADER_BYTES",
    "DEFAULT_MAX_BYTES",
    "ALLOWED_DTYPES",
    "Envelope",
    "encode",
    "decode",
    "peek_header",
    "payload_nbytes",
]

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 4 << 20
DEFAULT_MAX_BYTES = 1 << 30
_MAX_NDIM = 8
_MAX_NESTING = 8
_EXT_ARRAY = 1
_EXT_MESSAGE = 2

ALLOWED_DTYPES = frozenset(
    np.dtype(t).str
    for t in ("<f2", "<f4", "<f8", "<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8", "?")
)


@dataclass(frozen=True)
class Envelope:
    """One message on the wire with the routing facts the receiver checks before dispatch.

    ``instance`` is the secure-sum instance (or -1 outside a sum); ``phase`` is the strategy
    phase (or -1). ``sender`` is what the sender claims; the transport replaces or checks it
    against the authenticated identity.
    """

    round: int
    instance: int
    phase: int
    sender: str
    message: Any

    def __post_init__(self) -> None:
        for name in ("round", "instance", "phase"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < -1:
                raise WireFormatError(f"envelope {name} must be an int >= -1, got {v!r}")
        if not isinstance(self.sender, str) or not self.sender:
            raise WireFormatError(f"envelope sender must be a non-empty str, got {self.sender!r}")
        if not dataclasses.is_dataclass(self.message) or isinstance(self.message, type):
            raise WireFormatError(
                f"envelope message must be a dataclass instance, got {type(self.message).__name__}"
            )


def _le(a: np.ndarray) -> np.ndarray:
    dt = a.dtype
    if dt.byteorder == ">":
        a = a.astype(dt.newbyteorder("<"))
    return a if a.flags.c_contiguous else a.copy(order="C")  # keeps 0-d arrays 0-d


class _Packer:
    """Walks a message body, replacing arrays by ext references and collecting their frames."""

    def __init__(self) -> None:
        self.spec: list[list[Any]] = []
        self.frames: list[Any] = []

    def walk(self, v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, bytes)):
            return v
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, str):
            return str(v)
        if isinstance(v, np.ndarray):
            a = _le(v)
            if a.dtype.str not in ALLOWED_DTYPES:
                raise WireFormatError(f"array dtype {a.dtype} cannot go on the wire")
            self.spec.append([a.dtype.str, list(a.shape)])
            self.frames.append(memoryview(a).cast("B") if a.size else b"")
            return msgpack.ExtType(_EXT_ARRAY, struct.pack("<I", len(self.spec) - 1))
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, (list, tuple)):
            return [self.walk(x) for x in v]
        if isinstance(v, Mapping):
            out = {}
            for k, x in v.items():
                if isinstance(k, enum.Enum):
                    k = k.value
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise WireFormatError(f"mapping keys must be str or int, got {type(k).__name__}")
                out[k] = self.walk(x)
            return out
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            body = msgpack.packb([type(v).__name__, self.body(v)], use_bin_type=True)
            return msgpack.ExtType(_EXT_MESSAGE, body)
        raise WireFormatError(f"value of type {type(v).__name__} cannot go on the wire")

    def body(self, msg: Any) -> dict[str, Any]:
        return {f.name: self.walk(getattr(msg, f.name)) for f in dataclasses.fields(msg) if f.init}


def encode(env: Envelope) -> list[Any]:
    """Frames for ``env``: a msgpack header, then one buffer per array (no copies made)."""
    p = _Packer()
    body = p.body(env.message)
    header = {
        "v": PROTOCOL_VERSION,
        "type": type(env.message).__name__,
        "round": env.round,
        "instance": env.instance,
        "phase": env.phase,
        "sender": env.sender,
        "spec": p.spec,
        "body": body,
    }
    return [msgpack.packb(header, use_bin_type=True), *p.frames]


def _nbytes(spec_entry: Any, max_bytes: int) -> tuple[np.dtype, tuple[int, ...], int]:
    if not isinstance(spec_entry, (list, tuple)) or len(spec_entry) != 2:
        raise WireFormatError(f"array spec entry must be [dtype, shape], got {spec_entry!r}")
    dt, shape = spec_entry
    if not isinstance(dt, str) or dt not in ALLOWED_DTYPES:
        raise WireFormatError(f"array dtype {dt!r} is not allowed on the wire")
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_NDIM:
        raise WireFormatError(f"array shape must be a list of at most {_MAX_NDIM} ints, got {shape!r}")
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise WireFormatError(f"array shape must hold non-negative ints, got {shape!r}")
    dtype = np.dtype(dt)
    n = math.prod(shape) * dtype.itemsize
    if n > max_bytes:
        raise WireFormatError(f"array of shape {list(shape)} {dt} is {n} bytes, over the {max_bytes} limit")
    return dtype, tuple(shape), n


@lru_cache(maxsize=512)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: no coercion, the dataclass validates
        return {}


def _coerce(tp: Any, v: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, enum.Enum) and not isinstance(v, tp):
        try:
            return tp(v)
        except ValueError as e:
            raise WireFormatError(f"{v!r} is not a valid {tp.__name__}") from e
    return v


class _Unpacker:
    def __init__(self, arrays: list[np.ndarray], registry: Mapping[str, type]) -> None:
        self.arrays = arrays
        self.used = [False] * len(arrays)
        self.registry = registry
        self.depth = 0

    def ext(self, code: int, data: bytes) -> Any:
        if code == _EXT_ARRAY:
            if len(data) != 4:
                raise WireFormatError("malformed array reference")
            (i,) = struct.unpack("<I", data)
            if i >= len(self.arrays) or self.used[i]:
                raise WireFormatError(f"array reference {i} is missing or used twice")
            self.used[i] = True
            return self.arrays[i]
        if code == _EXT_MESSAGE:
            if self.depth >= _MAX_NESTING:
                raise WireFormatError(f"messages nested deeper than {_MAX_NESTING}")
            self.depth += 1
            try:
                inner = msgpack.unpackb(
                    data, raw=False, use_list=False, strict_map_key=False, ext_hook=self.ext,
                    max_bin_len=MAX_HEADER_BYTES, max_str_len=MAX_HEADER_BYTES,
                )
            except WireFormatError:
                raise
            except Exception as e:  # msgpack raises several unrelated types on garbage
                raise WireFormatError(f"nested message is not valid msgpack: {e}") from e
            if not isinstance(inner, tuple) or len(inner) != 2:
                raise WireFormatError("malformed nested message")
            try:
                return self.build(inner[0], inner[1])
            finally:
                self.depth -= 1
        raise WireFormatError(f"unknown msgpack extension {code}")

    def build(self, type_name: Any, body: Any) -> Any:
        cls = self.registry.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            raise WireFormatError(f"unknown message type {type_name!r}")
        if not isinstance(body, dict):
            raise WireFormatError(f"{type_name}: body must be a map")
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        if set(body) != fields:
            missing, extra = sorted(fields - set(body)), sorted(set(body) - fields)
            raise WireFormatError(f"{type_name}: missing fields {missing}, unexpected fields {extra}")
        hints = _hints(cls)
        kwargs = {k: _coerce(hints.get(k), v) for k, v in body.items()}
        try:
            return cls(**kwargs)
        except WireFormatError:
            raise
        except (TypeError, ValueError) as e:
            raise WireFormatError(f"{type_name}: {e}") from e


def peek_header(frames: Sequence[Any]) -> dict[str, Any]:
    """The decoded header map (type, round, instance, phase, sender, spec) without its arrays."""
    if not frames:
        raise WireFormatError("empty message")
    head = bytes(frames[0])
    if len(head) > MAX_HEADER_BYTES:
        raise WireFormatError(f"header of {len(head)} bytes is over the {MAX_HEADER_BYTES} limit")
    try:
        header = msgpack.unpackb(
            head, raw=False, use_list=False, strict_map_key=False,
            ext_hook=lambda code, data: msgpack.ExtType(code, data),
        )
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise WireFormatError(f"header is not valid msgpack: {e}") from e
    if not isinstance(header, dict):
        raise WireFormatError("header must be a map")
    if header.get("v") != PROTOCOL_VERSION:
        raise WireFormatError(f"protocol version {header.get('v')!r}, expected {PROTOCOL_VERSION}")
    for k in ("type", "round", "instance", "phase", "sender", "spec", "body"):
        if k not in header:
            raise WireFormatError(f"header lacks {k!r}")
    return header


def decode(
    frames: Sequence[Any], registry: Mapping[str, type], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> Envelope:
    """The :class:`Envelope` in ``frames``; raises :class:`WireFormatError` on any mismatch.

    ``registry`` maps type names to the dataclasses allowed to come out (ours and crypto's).
    ``max_bytes`` bounds the sum of all declared array sizes; it is checked before any
    array is built.
    """
    header = peek_header(frames)
    spec = header["spec"]
    if not isinstance(spec, tuple):
        raise WireFormatError("header spec must be a list")
    if len(frames) != 1 + len(spec):
        raise WireFormatError(f"header declares {len(spec)} arrays but {len(frames) - 1} frames came")
    checked = [_nbytes(s, max_bytes) for s in spec]
    total = sum(n for _, _, n in checked)
    if total > max_bytes:
        raise WireFormatError(f"arrays total {total} bytes, over the {max_bytes} limit")
    arrays = []
    for i, ((dtype, shape, n), frame) in enumerate(zip(checked, frames[1:])):
        buf = memoryview(frame).cast("B")
        if buf.nbytes != n:
            raise WireFormatError(f"array {i}: spec says {n} bytes, frame has {buf.nbytes}")
        arrays.append(np.frombuffer(buf, dtype=dtype).reshape(shape).copy())
    u = _Unpacker(arrays, registry)
    # The body was unpacked with ext objects left in place; rebuild it through the hook.
    try:
        body = _resolve(header["body"], u)
        msg = u.build(header["type"], body)
    except RecursionError:
        raise WireFormatError("message body nested too deeply") from None
    if not all(u.used):
        raise WireFormatError("an array frame is not referenced by the body")
    sender = header["sender"]
    try:
        return Envelope(header["round"], header["instance"], header["phase"], sender, msg)
    except WireFormatError:
        raise


def _resolve(v: Any, u: _Unpacker) -> Any:
    if isinstance(v, msgpack.ExtType):
        return u.ext(v.code, v.data)
    if isinstance(v, tuple):
        return tuple(_resolve(x, u) for x in v)
    if isinstance(v, dict):
        return {k: _resolve(x, u) for k, x in v.items()}
    return v


def payload_nbytes(frames: Sequence[Any]) -> int:
    """Bytes a message occupies on the wire (header plus array frames, before CURVE)."""
    return sum(memoryview(f).nbytes for f in frames)
