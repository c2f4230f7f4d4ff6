"""Files that hold updates, state or logs are owner-only; the event log bounds peer-chosen text;
aggregator.toml refuses what crypto would refuse later (issue #10)."""

from __future__ import annotations

import json

import pytest

from fedalign.host.atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text
from fedalign.protocol.config import validate_config
from fedalign.protocol.config.aggregator import AggregatorConfig
from fedalign.protocol.errors import ConfigError
from fedalign.compliance.eventlog import MAX_RECORD_CHARS, MAX_STR_CHARS, EventLog, read_events


def _mode(p):
    return p.stat().st_mode & 0o777


def test_atomic_writers_create_owner_only_files(tmp_path):
    atomic_write(tmp_path / "a.bin", lambda p: p.write_bytes(b"x"))
    atomic_write_bytes(tmp_path / "b.bin", b"x")
    atomic_write_text(tmp_path / "c.txt", "x")
    atomic_write_json(tmp_path / "d.json", {"x": 1})
    for n in ("a.bin", "b.bin", "c.txt", "d.json"):
        assert _mode(tmp_path / n) == 0o600, n
    atomic_write_bytes(tmp_path / "public.bin", b"x", mode=0o644)  # a caller can still ask for more
    assert _mode(tmp_path / "public.bin") == 0o644


def test_event_log_bounds_every_string(tmp_path):
    log = EventLog(tmp_path / "e.jsonl", source="aggregator")
    log.emit("message_refused", header="H" * (4 << 20), reason=["L" * (4 << 20)], sender="s" * 10_000)
    log.emit("x" * 100_000, **{"k" * 10_000: "v"})
    log.close()
    raw = (tmp_path / "e.jsonl").read_text()
    assert len(raw) < 64 * 1024
    ev = read_events(tmp_path / "e.jsonl")
    assert ev[0]["header"].startswith("H" * MAX_STR_CHARS) and ev[0]["header"].endswith(f"[{(4 << 20) - MAX_STR_CHARS} more chars]")
    assert len(ev[0]["reason"][0]) < MAX_STR_CHARS + 40 and len(ev[0]["sender"]) < MAX_STR_CHARS + 40
    assert len(ev[1]["event"]) < 300
    assert _mode(tmp_path / "e.jsonl") == 0o600


def test_event_log_bounds_a_record_of_many_bounded_values(tmp_path):
    log = EventLog(tmp_path / "e.jsonl", source="aggregator")
    rec = log.emit("many", rows=[{"t": "y" * 2000, "more": ["z" * 2000] * 300} for _ in range(300)])
    log.close()
    assert rec["truncated"] is True and len(json.dumps(rec)) <= MAX_RECORD_CHARS


@pytest.mark.parametrize("value", [4096, 1024])
def test_aggregator_config_refuses_a_ckks_ring_crypto_refuses(value):
    with pytest.raises(ConfigError, match="aggregator.toml: secure_sum.ckks_poly_modulus: Input should be 8192 or 16384"):
        validate_config({"init": {"d_vision": 4, "d_model": 4}, "secure_sum": {"ckks_poly_modulus": value}},
                        AggregatorConfig, source="aggregator.toml")
