"""Streaming records: the incremental JSON array parser against json.load, errors with lines, memory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedalign.protocol.errors import DataError
from fedalign.silo.data import read_records
from fedalign.silo.stream import iter_json_array, stream_records, stream_shards


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_parser_matches_json_load_across_chunk_boundaries(tmp_path, chunk):
    items = [{"a": i, "s": "é→" * i + '"\\]},[', "nested": [{"x": [1, 2, {"y": None}]}]} for i in range(25)]
    items += [[], "text", 3.5, None, True]
    f = tmp_path / "a.json"
    f.write_text("  \n[" + ",\n ".join(json.dumps(x, ensure_ascii=False) for x in items) + "\n]\n", encoding="utf-8")
    got = list(iter_json_array(f, chunk_chars=chunk))
    assert [o for _, o in got] == json.loads(f.read_text(encoding="utf-8"))
    assert [line for line, _ in got][:3] == [2, 3, 4]


def test_stream_records_equals_read_records(data_files):
    for name in ("train.json", "train.jsonl"):
        want, _ = read_records(data_files / name)
        got = list(stream_records(data_files / name))
        assert got == want  # same samples, same "file:line" origins


@pytest.mark.parametrize("text, where, what", [
    ('{"a": 1}', ":1:", "expected a JSON array"),
    ('[{"a": 1},\n {"b": 2}', ":2:", "not closed"),
    ('[{"a": 1}\n {"b": 2}]', ":2:", "expected ','"),
    ('[{"a": 1},\n\n {"b": }]', ":3:", "invalid JSON"),
])
def test_broken_arrays_name_the_line(tmp_path, text, where, what):
    f = tmp_path / "bad.json"
    f.write_text(text)
    with pytest.raises(DataError, match=where + ".*" + what):
        list(iter_json_array(f, chunk_chars=3))


def test_an_element_that_never_closes_is_bounded(tmp_path):
    f = tmp_path / "long.json"
    f.write_text('[{"a": "' + "x" * 5000)
    with pytest.raises(DataError, match="longer than 1000"):
        list(iter_json_array(f, chunk_chars=100, max_record_chars=1000))


def test_bad_records_fail_or_skip_with_their_line(data_files, tmp_path):
    rows = json.loads((data_files / "train.json").read_text())
    rows[2]["conversations"][0]["value"] = "no marker"
    f = data_files / "bad_stream.json"
    f.write_text(json.dumps(rows, indent=1))
    with pytest.raises(DataError, match=r"bad_stream\.json:\d+: prompt must contain <image>"):
        list(stream_records(f))
    rep: dict = {}
    kept = list(stream_records(f, policy="skip", report=rep))
    assert len(kept) == len(rows) - 1 and rep["skipped"] == 1 and "prompt must contain" in rep["problems"][0]


def test_shards_are_consecutive_and_cover_the_pass(data_files):
    samples = list(stream_records(data_files / "train.jsonl"))
    shards = list(stream_shards(iter(samples), 10))
    assert [len(s) for s in shards] == [10] * 6 + [4]
    assert [x for s in shards for x in s] == samples


@pytest.mark.slow
def test_streaming_100k_records_keeps_memory_flat(tmp_path):
    """Peak RSS of a process streaming 100K records stays within 60 MiB of its imports alone
    (json.load of the same file needs well over 100 MiB more)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from bench_stream import _BASE, _STREAM, generate, run
    finally:
        sys.path.pop(0)
    (tmp_path / "image.jpg").touch()
    generate(tmp_path / "big.json", 100_000, image="image.jpg")
    _, _, base = run(_BASE)
    n, _, streamed = run(_STREAM, str(tmp_path / "big.json"), str(tmp_path))
    assert n == 100_000
    assert streamed - base < 60, (streamed, base)
