"""The line protocol between ``aggregator serve`` and its ``silo reference`` child (Fed-CMP
reliability "reference"): one JSON request per round on the child's stdin, one answer line on its
stdout, tensors as safetensors files named in them (docs/fedcmp.md).

    request:  {"round": t, "params": "<θ_t .safetensors>", "out": "<Δ_ref .safetensors>"}
    answers:  fedalign-reference {"ready": true, "records": n, "shards": k}     (once, first)
              fedalign-reference {"round": t, "ok": true, "n_samples": n, "seconds": s}
              fedalign-reference {"round": t, "ok": false, "error": "..."}

Other stdout lines are not answers (a library may print); both sides read only prefixed ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedalign.protocol.errors import ConfigError

__all__ = ["REPLY_PREFIX", "reference_seed", "request_line", "parse_request", "answer_line", "parse_answer"]

REPLY_PREFIX = "fedalign-reference "


def reference_seed(seed: int, round_id: int) -> int:
    """The trainer's generator seed for round ``round_id``'s reference: fixed by the round, so a
    restarted coordinator gets the same Δ_ref (``silo reference`` and the lab's problems use it)."""
    return seed * 1_000_003 + 77_777 + round_id


def request_line(round_id: int, params: Path, out: Path) -> str:
    return json.dumps({"round": round_id, "params": str(params), "out": str(out)}) + "\n"


def parse_request(line: str) -> tuple[int, Path, Path]:
    """(round, θ file, Δ_ref file); ConfigError for anything else."""
    try:
        req = json.loads(line)
        t, src, dst = req["round"], Path(req["params"]), Path(req["out"])
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"bad request line {line[:200]!r}: {e}") from None
    if not isinstance(t, int) or isinstance(t, bool) or t < 0:
        raise ConfigError(f"bad request: round must be an int ≥ 0, got {t!r}")
    return t, src, dst


def answer_line(**fields: Any) -> str:
    return REPLY_PREFIX + json.dumps(fields, allow_nan=False) + "\n"


def parse_answer(line: str) -> dict[str, Any] | None:
    """The answer's fields, or None for a line that is not an answer; ValueError if unreadable."""
    if not line.startswith(REPLY_PREFIX):
        return None
    obj = json.loads(line[len(REPLY_PREFIX):])
    if not isinstance(obj, dict):
        raise ValueError("an answer must be a JSON object")
    return obj
