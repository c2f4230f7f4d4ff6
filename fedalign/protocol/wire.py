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

:func:`decode` is total: on any input its only exception is :class:`WireFormatError`, whose
message names the field and what was expected (attacker values are cut short). Every field
is checked against its dataclass type hint before the dataclass is built (``_check``: ints
are not bools, floats and float arrays are finite, containers hold the declared types), the
header is bounded in size, nesting depth and number of values before anything walks it, and
an empty array's dimensions are bounded like a full one's.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import math
import struct
import types
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
_MAX_NESTING = 8  # registered messages inside messages
_MAX_DEPTH = 32  # msgpack containers inside one header, all levels together
_MAX_ARRAYS = 65536  # array frames in one message
_MAX_ELEMENTS = 1 << 16  # msgpack values in one message, nested messages included
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
        raise WireFormatError(f"array spec entry must be [dtype, shape], got {_short(spec_entry)}")
    dt, shape = spec_entry
    if not isinstance(dt, str) or dt not in ALLOWED_DTYPES:
        raise WireFormatError(f"array dtype {_short(dt)} is not allowed on the wire")
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_NDIM:
        raise WireFormatError(f"array shape must be a list of at most {_MAX_NDIM} ints, got {_short(shape)}")
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise WireFormatError(f"array shape must hold non-negative ints, got {_short(shape)}")
    dtype = np.dtype(dt)
    n = math.prod(shape) * dtype.itemsize
    if n > max_bytes:
        raise WireFormatError(f"array of shape {_short(list(shape))} {dt} is {n} bytes, over the {max_bytes} limit")
    # A zero-size array allocates nothing, but its dimensions still bound what a consumer may
    # allocate from them (and numpy refuses shapes whose product overflows): bound the shape as
    # if every zero were one.
    extent = math.prod(max(d, 1) for d in shape) * dtype.itemsize
    if extent > max_bytes:
        raise WireFormatError(
            f"array shape {_short(list(shape))} has dimensions spanning {extent} bytes, over the {max_bytes} limit"
        )
    return dtype, tuple(shape), n


def _short(v: Any, limit: int = 80) -> str:
    """``repr(v)`` cut to ``limit`` characters: error messages never echo a large attacker value."""
    try:
        r = repr(v)
    except Exception:  # a repr that fails (or recurses) must not turn a format error into another
        r = f"<{type(v).__name__}>"
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _kind(v: Any) -> str:
    return type(v).__name__


@lru_cache(maxsize=512)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: no checks beyond the dataclass's own
        return {}


def _describe(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("numpy.", "np.")


def _check(tp: Any, v: Any, where: str) -> Any:
    """``v`` checked against the type hint ``tp`` (and converted: enums, int -> float).

    Every field of a decoded message passes here before the dataclass sees it, so a
    constructor never meets a value of a type it was not written for. Floats must be finite.
    Hints this checker does not know (``Any``, ``object``, type variables) accept any value
    msgpack can produce; the dataclass's own ``__post_init__`` then validates ranges.
    """
    if tp is None or tp is Any or tp is object or isinstance(tp, typing.TypeVar):
        return _finite_inside(v, where)
    if tp is type(None):
        if v is not None:
            raise WireFormatError(f"{where}: expected None, got {_kind(v)}")
        return v
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        errors = []
        for alt in typing.get_args(tp):
            try:
                return _check(alt, v, where)
            except WireFormatError as e:
                errors.append(e)
        raise WireFormatError(f"{where}: expected {_describe(tp)}, got {_kind(v)} {_short(v, 40)}")
    if origin is not None:
        args = typing.get_args(tp)
        if origin is tuple:
            if not isinstance(v, tuple):
                raise WireFormatError(f"{where}: expected a list ({_describe(tp)}), got {_kind(v)}")
            if not args:
                return _finite_inside(v, where)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_check(args[0], x, f"{where}[{i}]") for i, x in enumerate(v))
            if len(v) != len(args):
                raise WireFormatError(f"{where}: expected {len(args)} items ({_describe(tp)}), got {len(v)}")
            return tuple(_check(a, x, f"{where}[{i}]") for i, (a, x) in enumerate(zip(args, v)))
        if isinstance(origin, type) and issubclass(origin, collections.abc.Mapping):
            if not isinstance(v, dict):
                raise WireFormatError(f"{where}: expected a map ({_describe(tp)}), got {_kind(v)}")
            if not args:
                return _finite_inside(v, where)
            kt, vt = args
            return {_check(kt, k, f"{where} key"): _check(vt, x, f"{where}[{_short(k, 40)}]") for k, x in v.items()}
        if isinstance(origin, type) and issubclass(origin, collections.abc.Sequence):  # list[...] / Sequence[...]
            if not isinstance(v, tuple):
                raise WireFormatError(f"{where}: expected a list ({_describe(tp)}), got {_kind(v)}")
            (et,) = args or (Any,)
            return tuple(_check(et, x, f"{where}[{i}]") for i, x in enumerate(v))
        return _finite_inside(v, where)  # Literal, Annotated, ...: left to the dataclass
    if not isinstance(tp, type):
        return _finite_inside(v, where)
    if issubclass(tp, enum.Enum):
        if isinstance(v, tp):
            return v
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise WireFormatError(f"{where}: expected a {tp.__name__} value, got {_kind(v)}")
        try:
            return tp(v)
        except ValueError:
            raise WireFormatError(f"{where}: {_short(v, 40)} is not a valid {tp.__name__}") from None
    if tp is bool:
        if not isinstance(v, bool):
            raise WireFormatError(f"{where}: expected a bool, got {_kind(v)}")
        return v
    if tp is int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise WireFormatError(f"{where}: expected an int, got {_kind(v)} {_short(v, 40)}")
        return v
    if tp is float:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise WireFormatError(f"{where}: expected a finite float, got {_kind(v)} {_short(v, 40)}")
        try:
            f = float(v)
        except OverflowError:  # an int beyond float range
            raise WireFormatError(f"{where}: expected a finite float, got an int of {v.bit_length()} bits") from None
        if not math.isfinite(f):
            raise WireFormatError(f"{where}: expected a finite float, got {f!r}")
        return f
    if tp is str or tp is bytes or tp is np.ndarray:
        if not isinstance(v, tp):
            raise WireFormatError(f"{where}: expected {_describe(tp)}, got {_kind(v)}")
        return v
    if tp in (tuple, list):
        if not isinstance(v, tuple):
            raise WireFormatError(f"{where}: expected a list, got {_kind(v)}")
        return _finite_inside(v, where)
    if tp in (dict,) or tp is collections.abc.Mapping:
        if not isinstance(v, dict):
            raise WireFormatError(f"{where}: expected a map, got {_kind(v)}")
        return _finite_inside(v, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, tp):
            raise WireFormatError(f"{where}: expected a {tp.__name__} message, got {_kind(v)}")
        return v
    return v


def _finite_inside(v: Any, where: str) -> Any:
    """``v`` unchanged if no float anywhere inside it is NaN or infinite (iterative walk)."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, float):
            if not math.isfinite(x):
                raise WireFormatError(f"{where}: expected finite numbers, found {x!r}")
        elif isinstance(x, tuple):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
    return v


class _Unpacker:
    def __init__(self, arrays: list[np.ndarray], registry: Mapping[str, type]) -> None:
        self.arrays = arrays
        self.used = [False] * len(arrays)
        self.registry = registry
        self.depth = 0
        self.budget = _MAX_ELEMENTS  # values left for nested messages (the header was measured)

    def ext(self, code: int, data: bytes, depth: int) -> Any:
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
                inner = _unpack(data, "nested message")
                self.budget -= _measure(inner, "nested message", self.budget)
                if not isinstance(inner, tuple) or len(inner) != 2:
                    raise WireFormatError("malformed nested message: expected [type, body]")
                return self.build(inner[0], _resolve(inner[1], self, depth + 1))
            finally:
                self.depth -= 1
        raise WireFormatError(f"unknown msgpack extension {code}")

    def build(self, type_name: Any, body: Any) -> Any:
        cls = self.registry.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            raise WireFormatError(f"unknown message type {_short(type_name)}")
        if not isinstance(body, dict):
            raise WireFormatError(f"{type_name}: body must be a map, got {_kind(body)}")
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        if not all(isinstance(k, str) for k in body) or set(body) != fields:
            names = {k for k in body if isinstance(k, str)}
            missing = sorted(fields - names)
            extra = sorted(k[:40] if isinstance(k, str) else _short(k, 40) for k in body if k not in fields)
            raise WireFormatError(f"{type_name}: missing fields {missing}, unexpected fields {extra}")
        precheck = getattr(cls, "_wire_precheck", None)  # cheap size limits before the walk below
        if precheck is not None:
            precheck(body)
        hints = _hints(cls)
        kwargs = {k: _check(hints.get(k), v, f"{type_name}.{k}") for k, v in body.items()}
        try:
            return cls(**kwargs)
        except WireFormatError:
            raise
        except (TypeError, ValueError, ArithmeticError, LookupError) as e:
            raise WireFormatError(f"{type_name}: {_short(str(e), 200)}") from e


def _unpack(data: bytes, what: str) -> Any:
    """msgpack bytes -> Python values, ext objects left in place; any failure is a WireFormatError."""
    try:
        return msgpack.unpackb(
            data, raw=False, use_list=False, strict_map_key=False,
            ext_hook=lambda code, d: msgpack.ExtType(code, d),
            max_bin_len=MAX_HEADER_BYTES, max_str_len=MAX_HEADER_BYTES,
            max_array_len=_MAX_ELEMENTS, max_map_len=_MAX_ELEMENTS,
        )
    except RecursionError:
        raise WireFormatError(f"{what} nested too deeply") from None
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise WireFormatError(f"{what} is not valid msgpack: {_short(str(e), 200)}") from None


def peek_header(frames: Sequence[Any]) -> dict[str, Any]:
    """The decoded header map (type, round, instance, phase, sender, spec) without its arrays."""
    return _peek(frames)[0]


def _peek(frames: Sequence[Any]) -> tuple[dict[str, Any], int]:
    """The header and the number of values in it (what the element budget has left to spend)."""
    if not frames:
        raise WireFormatError("empty message")
    try:
        head = bytes(frames[0])
    except (TypeError, ValueError, BufferError) as e:
        raise WireFormatError(f"header frame is not bytes ({_kind(frames[0])})") from e
    if len(head) > MAX_HEADER_BYTES:
        raise WireFormatError(f"header of {len(head)} bytes is over the {MAX_HEADER_BYTES} limit")
    header = _unpack(head, "header")
    if not isinstance(header, dict):
        raise WireFormatError("header must be a map")
    spec = header.get("spec")
    if isinstance(spec, tuple) and (len(spec) > _MAX_ARRAYS or len(spec) != len(frames) - 1):
        # cheap checks first: a header of half a million spec entries is refused before any walk
        raise WireFormatError(f"header declares {len(spec)} arrays but {len(frames) - 1} frames came "
                              f"(at most {_MAX_ARRAYS})")
    used = _measure(header, "header", _MAX_ELEMENTS)
    v = header.get("v")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise WireFormatError(f"protocol version {_short(v)}, expected {PROTOCOL_VERSION}")
    for k in ("type", "round", "instance", "phase", "sender", "spec", "body"):
        if k not in header:
            raise WireFormatError(f"header lacks {k!r}")
    for k in ("round", "instance", "phase"):
        if not isinstance(header[k], int) or isinstance(header[k], bool) or header[k] < -1:
            raise WireFormatError(f"header {k} must be an int >= -1, got {_kind(header[k])} {_short(header[k], 40)}")
    if not isinstance(header["sender"], str) or not header["sender"]:
        raise WireFormatError(f"header sender must be a non-empty str, got {_kind(header['sender'])}")
    if not isinstance(header["type"], str):
        raise WireFormatError(f"header type must be a str, got {_kind(header['type'])}")
    return header, used


def _measure(v: Any, what: str, budget: int) -> int:
    """Values in ``v``, walked level by level; refuse more than ``budget`` or deeper than _MAX_DEPTH.

    Bounds the work every later pass (resolving, type checks) does on a hostile header, and
    never recurses, so no nesting can exhaust the stack.
    """
    count, level, depth = 0, [v], 1
    while level:
        if depth > _MAX_DEPTH:
            raise WireFormatError(f"{what} nested deeper than {_MAX_DEPTH} levels")
        nxt: list[Any] = []
        for x in level:
            if type(x) is tuple:
                count += len(x)
                nxt += [y for y in x if type(y) is tuple or type(y) is dict]
            else:  # a dict
                count += 2 * len(x)
                nxt += [y for y in x.values() if (type(y) is tuple and y) or (type(y) is dict and y)]
                nxt += [k for k in x if type(k) is tuple and k]
            if count > budget:
                raise WireFormatError(f"{what} holds more than {_MAX_ELEMENTS} values in all")
        level, depth = [y for y in nxt if y], depth + 1
    return count


def decode(
    frames: Sequence[Any], registry: Mapping[str, type], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> Envelope:
    """The :class:`Envelope` in ``frames``; raises :class:`WireFormatError` on any mismatch.

    ``registry`` maps type names to the dataclasses allowed to come out (ours and crypto's).
    ``max_bytes`` bounds the sum of all declared array sizes; it is checked before any
    array is built. Total: whatever bytes arrive, the only exception is WireFormatError.
    """
    try:
        return _decode(frames, registry, max_bytes)
    except WireFormatError:
        raise
    except RecursionError:
        raise WireFormatError("message nested too deeply") from None
    except Exception as e:  # a backstop: a decoder bug must not become a crash of the caller
        raise WireFormatError(f"malformed message ({type(e).__name__}: {_short(str(e), 200)})") from e


def _decode(frames: Sequence[Any], registry: Mapping[str, type], max_bytes: int) -> Envelope:
    header, used = _peek(frames)
    spec = header["spec"]
    if not isinstance(spec, tuple):
        raise WireFormatError(f"header spec must be a list, got {_kind(spec)}")
    if len(frames) != 1 + len(spec):
        raise WireFormatError(f"header declares {len(spec)} arrays but {len(frames) - 1} frames came")
    checked = [_nbytes(s, max_bytes) for s in spec]
    total = sum(n for _, _, n in checked)
    if total > max_bytes:
        raise WireFormatError(f"arrays total {total} bytes, over the {max_bytes} limit")
    arrays = []
    for i, ((dtype, shape, n), frame) in enumerate(zip(checked, frames[1:])):
        try:
            buf = memoryview(frame).cast("B")
        except (TypeError, ValueError, BufferError) as e:
            raise WireFormatError(f"array {i}: frame is not a contiguous byte buffer") from e
        if buf.nbytes != n:
            raise WireFormatError(f"array {i}: spec says {n} bytes, frame has {buf.nbytes}")
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        if dtype.kind == "f" and not np.isfinite(arr).all():
            raise WireFormatError(f"array {i} ({dtype.str} {_short(list(shape))}): expected finite values, "
                                  "found NaN or infinity")
        arrays.append(arr.copy())
    u = _Unpacker(arrays, registry)
    u.budget -= used
    # The body was unpacked with ext objects left in place; rebuild it through the hook.
    body = _resolve(header["body"], u, 0)
    msg = u.build(header["type"], body)
    if not all(u.used):
        raise WireFormatError("an array frame is not referenced by the body")
    return Envelope(header["round"], header["instance"], header["phase"], header["sender"], msg)


def _resolve(v: Any, u: _Unpacker, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise WireFormatError(f"message body nested deeper than {_MAX_DEPTH} levels")
    if isinstance(v, msgpack.ExtType):
        return u.ext(v.code, v.data, depth)
    if isinstance(v, tuple):
        return tuple(_resolve(x, u, depth + 1) for x in v)
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise WireFormatError(f"map keys must be str or int, got {_kind(k)}")
            out[k] = _resolve(x, u, depth + 1)
        return out
    return v


def payload_nbytes(frames: Sequence[Any]) -> int:
    """Bytes a message occupies on the wire (header plus array frames, before CURVE)."""
    return sum(memoryview(f).nbytes for f in frames)
