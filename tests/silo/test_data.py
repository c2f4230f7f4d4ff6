"""Data files: both formats, bad records named by file and line, skip/fail, the one-pass cursor."""

import json

import pytest

from fedalign.protocol.errors import DataError
from fedalign.silo.data import DEFAULT_PROMPT, ShardCursor, fingerprint, read_records


@pytest.mark.parametrize("name", ["train.jsonl", "train.json"])
def test_both_formats_read_the_same_records(data_files, name):
    samples, rep = read_records(data_files / name)
    assert rep.kept == 64 and rep.skipped == 0
    assert samples[3].image == data_files / "img/003.png"
    assert samples[3].prompt == (DEFAULT_PROMPT if name.endswith("l") else "describe :\n<image>")
    assert samples[3].caption.startswith("a ")


def _bad_jsonl(root):
    (root / "broken.png").write_bytes(b"not a png at all")
    lines = [
        {"image": "img/000.png", "caption": "a red dot"},
        {"image": "img/missing.png", "caption": "a red dot"},  # line 2
        {"image": "broken.png", "caption": "a red dot"},  # line 3
        {"image": "img/001.png", "caption": "   "},  # line 4
        {"image": "img/002.png", "caption": "x", "prompt": "no marker"},  # line 5
        "{not json",  # line 6
        {"image": "img/003.png"},  # line 7
    ]
    p = root / "bad.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return p


def test_fail_policy_names_file_and_line(data_files, tmp_path):
    p = _bad_jsonl(data_files)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: image file not found"):
        read_records(p)


def test_skip_policy_counts_every_problem(data_files):
    samples, rep = read_records(_bad_jsonl(data_files), policy="skip")
    assert rep.kept == 1 and rep.skipped == 6
    for line, what in [(2, "not found"), (3, "cannot decode"), (4, "empty caption"), (5, "exactly once"),
                       (6, "invalid JSON"), (7, "caption")]:
        assert any(f"bad.jsonl:{line}:" in q and what in q for q in rep.problems), (line, rep.problems)


def test_llava_json_line_numbers(data_files, tmp_path):
    recs = json.loads((data_files / "train.json").read_text())[:3]
    recs[2]["conversations"][0]["value"] = "no image marker"
    p = tmp_path / "x.json"
    p.write_text(json.dumps(recs, indent=1))
    lines = p.read_text().splitlines()
    starts = [i + 1 for i, l in enumerate(lines) if l == " {"]
    with pytest.raises(DataError, match=rf"x\.json:{starts[2]}: prompt must contain"):
        read_records(p, image_root=data_files)


def test_cursor_never_rereads_after_restart(tmp_path):
    fp = "abc"
    c = ShardCursor(tmp_path / "cursor.json", 10, fp, seed=1)
    a = c.next_shard(4)
    b = ShardCursor(tmp_path / "cursor.json", 10, fp, seed=1).next_shard(4)  # a restart
    last = ShardCursor(tmp_path / "cursor.json", 10, fp, seed=1).next_shard(4)
    assert not set(a.indices) & set(b.indices) and not (set(a.indices) | set(b.indices)) & set(last.indices)
    assert sorted(a.indices + b.indices + last.indices) == list(range(10))
    assert (a.shard_index, b.shard_index, last.shard_index) == (0, 1, 2)
    with pytest.raises(DataError, match="one-pass"):
        ShardCursor(tmp_path / "cursor.json", 10, fp, seed=1).next_shard(4)
    with pytest.raises(DataError, match="different data"):
        ShardCursor(tmp_path / "cursor.json", 10, "other", seed=1)


def test_second_pass_only_when_allowed(tmp_path):
    c = ShardCursor(tmp_path / "c.json", 6, "f", seed=0, max_passes=2)
    shards = [c.next_shard(3) for _ in range(4)]
    assert [s.pass_index for s in shards] == [0, 0, 1, 1]
    assert c.samples_used == 12


def test_fingerprint_changes_with_captions(data_files):
    s, _ = read_records(data_files / "train.jsonl")
    assert fingerprint(s) != fingerprint(s[:-1]) and fingerprint(s) == fingerprint(list(s))
