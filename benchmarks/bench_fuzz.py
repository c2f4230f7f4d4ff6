"""Mutational fuzzing of the network decoder (``fedalign.protocol.wire.decode`` with the full registry).

Captures valid frames of every message type that crosses the network (ours and crypto's
secure-sum messages), then feeds ``decode`` mutated copies: byte flips, insertions,
deletions, truncations, splices between messages, and structure-aware mutations of the
msgpack header (a field replaced by a value of another type, NaN, a huge int, a deep list,
a spec entry with a huge or zero-size-but-huge shape, frames dropped or duplicated).

Counts, measured in one run: inputs, accepted (decoded to a message), rejected with
``WireFormatError``, untyped exceptions (anything else: each is a bug, its type and first
message are listed), accepted inputs that do not survive encode + decode again, and hangs (one decode over ``--hang-s`` seconds); then the decode time
of a few hand-made worst cases (4 MiB headers of tiny values). Ends with one JSON line. Not a
test: nothing here asserts a time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fuzz.py [--n 100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import time

from fedalign.host.process import apply_process_defaults

apply_process_defaults()

import msgpack  # noqa: E402
import numpy as np  # noqa: E402

from fedalign.protocol.errors import WireFormatError  # noqa: E402
from fedalign.protocol.messages import (  # noqa: E402
    Heartbeat, LeaveNotice, RoundEnd, RoundStart, RunEnd, Stage, SumScheme, SumStart, UpdateReady, wire_registry,
)
from fedalign.protocol.wire import Envelope, decode, encode  # noqa: E402
from fedalign.crypto import messages as cm  # noqa: E402

MAX_BYTES = 64 << 20  # what a test deployment would allow; the default is 1 GiB


def corpus() -> list[list[bytes]]:
    """Valid frames of every network message type (captured from ``encode``)."""
    rng = np.random.default_rng(0)
    w = {"0.weight": rng.standard_normal((8, 4)).astype(np.float32), "0.bias": np.zeros(8, np.float32)}
    msgs = [
        ("silo-a", Heartbeat(Stage.TRAIN, 3)),
        ("aggregator", RoundStart(2, w, {"q": rng.standard_normal((4, 2))}, ("a", "b", "c"), bytes(range(32)),
                                  "fedcmp", {"rank": 4, "beta": 0.9}, 2, 60.0, ("a", "b"))),
        ("silo-a", UpdateReady(2, 1.25)),
        ("aggregator", SumStart(2, 1, 7, SumScheme.SECAGG, ("a", "b", "c"), 2, 16.0, 0, 8192,
                                {"u": np.ones((3, 2), np.float64)})),
        ("aggregator", RoundEnd(2, True, "committed", ("a", "b"))),
        ("aggregator", RunEnd(5, w, "done")),
        ("silo-a", LeaveNotice("privacy budget exhausted")),
        ("a", cm.KeyAdvertisement(round_id=2, instance_id=7, sender="a", cipher_pk=b"\x01" * 32,
                                  mask_pk=b"\x02" * 32, signature=b"\x03" * 64)),
        ("aggregator", cm.KeyRoster(round_id=2, instance_id=7, sender="aggregator",
                                    keys={"a": (b"\x01" * 32, b"\x02" * 32, b"\x03" * 64),
                                          "b": (b"\x04" * 32, b"\x05" * 32, b"\x06" * 64)})),
        ("a", cm.EncryptedShares(round_id=2, instance_id=7, sender="a", shares={"b": b"x" * 100, "c": b"y" * 100})),
        ("a", cm.MaskedInput(round_id=2, instance_id=7, sender="a", names=("w", "b"), shapes=((4, 2), (3,)),
                             masked=np.arange(11, dtype=np.uint32))),
        ("aggregator", cm.UnmaskRequest(round_id=2, instance_id=7, sender="aggregator", survivors=("a", "b"),
                                        dropped=("c",), signatures={"a": b"s" * 64, "b": b"t" * 64})),
        ("a", cm.UnmaskResponse(round_id=2, instance_id=7, sender="a", self_seed_shares={"b": b"s" * 66},
                                mask_key_shares={"c": b"m" * 66})),
        ("a", cm.CkksInput(round_id=2, instance_id=7, sender="a", names=("w",), shapes=((4, 2),),
                           chunks=(b"c" * 50, b"d" * 50))),
        ("a", cm.CkksDecryptedSum(round_id=2, instance_id=7, sender="a", values=np.linspace(0, 1, 8))),
        ("a", cm.PlainInput(round_id=2, instance_id=7, sender="a", names=("w",), shapes=((2, 2),),
                            values=np.ones(4))),
    ]
    return [[bytes(f) for f in encode(Envelope(2, 7, 1, s, m))] for s, m in msgs]


def _hostile_value(r: random.Random):
    """A msgpack value of a random type, often one no field expects."""
    k = r.randrange(14)
    return [
        lambda: None, lambda: True, lambda: r.choice([-1, 0, 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1]),
        lambda: r.choice([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 0.5]),
        lambda: "x" * r.choice([0, 1, 100, 100_000]), lambda: b"\x00" * r.choice([0, 31, 32, 66]),
        lambda: [1, 2, 3], lambda: {"a": 1}, lambda: {1: b"x", "b": [None]}, lambda: [[[[[]]]]],
        lambda: msgpack.ExtType(1, b"\x00\x00\x00\x00"), lambda: msgpack.ExtType(2, b"\x92\xa3Foo\x80"),
        lambda: msgpack.ExtType(r.randrange(-128, 128), b"zz"), lambda: [0] * 3,
    ][k]()


def _deep(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def structured(frames: list[bytes], r: random.Random) -> list[bytes]:
    """Mutate the decoded header and re-encode it (msgpack-valid, semantically hostile)."""
    h = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    rest = list(frames[1:])
    k = r.randrange(9)
    if k == 0 and h["body"]:  # a body field of the wrong type
        h["body"][r.choice(sorted(h["body"]))] = _hostile_value(r)
    elif k == 1:  # an envelope field of the wrong type
        h[r.choice(["v", "type", "round", "instance", "phase", "sender", "spec", "body"])] = _hostile_value(r)
    elif k == 2 and h["spec"]:  # a shape with a huge dimension, sometimes zero-size
        i = r.randrange(len(h["spec"]))
        dims = r.choice([[0, 2**62], [0, 2**40, 2**40], [2**64 - 1], [0] * 9, [-1], [2**31, 0], [0, 1 << 33]])
        h["spec"][i][1] = dims
        if any(d == 0 for d in dims if isinstance(d, int)):
            rest[i] = b""
    elif k == 3 and h["spec"]:  # a dtype outside the allowlist or of the wrong type
        h["spec"][r.randrange(len(h["spec"]))][0] = r.choice(["|O", "<c16", ">f4", "V8", 7, None, ["<f4"]])
    elif k == 4:  # deep nesting inside a field (written by hand: msgpack refuses to pack it)
        mark = "PLACEHOLDER-DEEP"
        if h["body"]:
            h["body"][r.choice(sorted(h["body"]))] = mark
            raw = msgpack.packb(h, use_bin_type=True)
            return [raw.replace(msgpack.packb(mark), _deep(r.choice([40, 500, 5000, 200_000]))), *rest]
    elif k == 5:  # frames dropped, duplicated or swapped
        if rest and r.random() < 0.5:
            rest.pop(r.randrange(len(rest)))
        elif rest:
            rest.append(rest[0])
        else:
            rest.append(b"\x00" * 8)
    elif k == 6 and h["body"]:  # missing or extra fields, non-str keys
        if r.random() < 0.5:
            h["body"].pop(r.choice(sorted(h["body"])))
        else:
            h["body"][r.choice([1, "evil", b"k", 2.5])] = 1
    elif k == 7:  # a nested message ext in a random field
        inner = msgpack.packb([r.choice(["Heartbeat", "RoundStart", "Nope", 3]), {"stage": "train", "last_committed": 1}])
        key = r.choice(sorted(h["body"])) if h["body"] else "x"
        h["body"][key] = msgpack.ExtType(2, inner)
    else:  # a float field made non-finite, or a str field made an array
        for key, v in list(h["body"].items()):
            if isinstance(v, float):
                h["body"][key] = r.choice([float("nan"), float("inf"), "1.0", [1.0]])
            elif isinstance(v, str):
                h["body"][key] = r.choice([[v], {"x": v}, 5, None])
    return [msgpack.packb(h, use_bin_type=True), *rest]


def bytewise(frames: list[bytes], pool: list[list[bytes]], r: random.Random) -> list[bytes]:
    """Blind byte mutations of one frame (mostly the header)."""
    out = list(frames)
    i = 0 if (len(out) == 1 or r.random() < 0.8) else r.randrange(1, len(out))
    b = bytearray(out[i])
    for _ in range(r.choice([1, 1, 2, 4, 16])):
        k = r.randrange(6)
        if k == 0 and b:
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
        elif k == 1 and b:
            b[r.randrange(len(b))] = r.choice([0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0xCB, 0xCF])
        elif k == 2:
            j = r.randrange(len(b) + 1)
            b[j:j] = bytes(r.randrange(256) for _ in range(r.randrange(1, 9)))
        elif k == 3 and b:
            j = r.randrange(len(b))
            del b[j : j + r.randrange(1, 9)]
        elif k == 4:
            del b[r.randrange(len(b) + 1):]
        else:
            other = r.choice(pool)[0]
            j, m = r.randrange(len(b) + 1), r.randrange(len(other) + 1)
            b = b[:j] + other[m:]
    out[i] = bytes(b)
    return out


def crafted() -> dict[str, list[bytes]]:
    """Hand-made worst cases near the 4 MiB header limit: many tiny values cost CPU, not memory."""
    base = msgpack.unpackb(corpus()[1][0], raw=False)  # RoundStart without its arrays
    base["spec"], base["body"]["params"], base["body"]["public"] = [], {}, {}
    out = {}
    for name, value in [("4M nils", [None] * ((4 << 20) - 400)), ("4M empty maps", [{}] * ((4 << 20) - 400)),
                        ("30k empty maps", [{}] * 30_000), ("2M one-item lists", [[1]] * ((2 << 20) - 400))]:
        h = {**base, "body": {**base["body"], "strategy_options": {"x": value}}}
        out[name] = [msgpack.packb(h, use_bin_type=True)]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="mutated inputs (default 100000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-s", type=float, default=1.0, help="one decode slower than this counts as a hang")
    a = ap.parse_args(argv)
    reg = wire_registry()
    pool = corpus()
    for fr in pool:  # the corpus itself must decode
        decode(fr, reg, max_bytes=MAX_BYTES)
    r = random.Random(a.seed)
    counts = collections.Counter()
    untyped: collections.Counter = collections.Counter()
    examples: dict[str, str] = {}
    slowest = 0.0
    t_all = time.perf_counter()
    for _ in range(a.n):
        fr = r.choice(pool)
        mode = "structured" if r.random() < 0.5 else "bytewise"
        try:
            inp = structured(fr, r) if mode == "structured" else bytewise(fr, pool, r)
        except Exception:  # a mutation that cannot be packed: count it as a bytewise one instead
            mode, inp = "bytewise", bytewise(fr, pool, r)
        counts[mode] += 1
        t0 = time.perf_counter()
        try:
            env = decode(inp, reg, max_bytes=MAX_BYTES)
            counts["accepted"] += 1
            try:  # what was accepted is well-formed: it encodes and decodes again
                decode([bytes(f) for f in encode(env)], reg, max_bytes=MAX_BYTES)
            except Exception:  # noqa: BLE001
                counts["accepted_not_round_tripping"] += 1
        except WireFormatError:
            counts["wire_format_error"] += 1
        except BaseException as e:  # noqa: BLE001 - counting exactly these is the point
            if isinstance(e, KeyboardInterrupt):
                raise
            key = type(e).__name__
            untyped[key] += 1
            examples.setdefault(key, str(e)[:120])
        dt = time.perf_counter() - t0
        slowest = max(slowest, dt)
        if dt > a.hang_s:
            counts["hangs"] += 1
    elapsed = time.perf_counter() - t_all
    crafted_ms = {}
    for name, fr in crafted().items():
        t0 = time.perf_counter()
        try:
            decode(fr, reg, max_bytes=MAX_BYTES)
            outcome = "accepted"
        except WireFormatError:
            outcome = "WireFormatError"
        except Exception as e:  # noqa: BLE001
            outcome = type(e).__name__
            untyped[outcome] += 1
            examples.setdefault(outcome, str(e)[:120])
        dt = time.perf_counter() - t0
        crafted_ms[name] = {"ms": round(dt * 1e3, 2), "outcome": outcome}
        if dt > a.hang_s:
            counts["hangs"] += 1
    result = {
        "bench": "fuzz_wire_decode",
        "inputs": a.n,
        "seed": a.seed,
        "corpus_messages": len(pool),
        "structured": counts["structured"],
        "bytewise": counts["bytewise"],
        "accepted": counts["accepted"],
        "accepted_not_round_tripping": counts["accepted_not_round_tripping"],
        "wire_format_error": counts["wire_format_error"],
        "untyped_exceptions": sum(untyped.values()),
        "untyped_by_type": dict(untyped),
        "hangs": counts["hangs"],
        "hang_threshold_s": a.hang_s,
        "slowest_decode_ms": round(slowest * 1e3, 2),
        "mean_decode_us": round(elapsed / max(1, a.n) * 1e6, 1),
        "crafted": crafted_ms,
    }
    print(f"inputs {a.n} (structured {result['structured']}, bytewise {result['bytewise']}); "
          f"accepted {result['accepted']} ({result['accepted_not_round_tripping']} not round-tripping), WireFormatError {result['wire_format_error']}, "
          f"untyped exceptions {result['untyped_exceptions']}, hangs (> {a.hang_s}s) {result['hangs']}; "
          f"slowest decode {result['slowest_decode_ms']} ms")
    for k, v in crafted_ms.items():
        print(f"  crafted {k}: {v['ms']} ms, {v['outcome']}")
    for k, v in untyped.most_common():
        print(f"  untyped {k}: {v}  e.g. {examples[k]!r}")
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
