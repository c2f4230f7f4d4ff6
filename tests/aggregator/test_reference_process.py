"""aggregator/reference.py: the coordinator's reference update from a child process, and how it fails.

The child here is fedalign/lab/loopback/reference.py (``silo reference``'s line protocol over the toy); the
real ``silo reference`` runs in tests/silo/test_reference.py and in the federation example."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from fedalign.aggregator.reference import ReferenceProcess
from fedalign.protocol.errors import ReferenceFailed

TOY = ["-m", "fedalign.lab.loopback.reference"]
PARAMS = {"weight": torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), "bias": torch.zeros(6)}


def _proc(tmp_path, *args, deadline_s=30.0, first_round=0, events=None):
    cmd = [sys.executable, *TOY, "--marker", str(tmp_path / "starts"), *args]
    notify = (lambda e, f: events.append((e, f))) if events is not None else None
    return ReferenceProcess(tmp_path / "aggregator.toml", tmp_path / "ref", first_round=first_round,
                            deadline_s=deadline_s, command=cmd, notify=notify)


def test_answers_round_by_round_and_a_restarted_coordinator_gets_the_same_reference(tmp_path):
    events: list = []
    p = _proc(tmp_path, "--toy", "3", events=events)
    p.start()
    try:
        d0, d1 = p(PARAMS), p(PARAMS)
    finally:
        p.close()
    assert set(d0) == set(PARAMS) and all(d0[k].shape == PARAMS[k].shape for k in d0)
    assert not torch.equal(d0["weight"], d1["weight"])  # round 1 trains on its own seed
    q = _proc(tmp_path, "--toy", "3", first_round=1)  # resumed after round 0 committed
    q.start()
    try:
        torch.testing.assert_close(q(PARAMS), d1, rtol=0, atol=0)
    finally:
        q.close()
    assert [e for e, _ in events].count("reference_done") == 2


def test_a_child_that_crashes_is_started_again_once_and_the_round_goes_on(tmp_path):
    events: list = []
    p = _proc(tmp_path, "--exit-at", "1", events=events)
    p.start()
    try:
        p(PARAMS)
        with pytest.raises(ReferenceFailed, match=r"round 1.*exited.*exiting at round 1 on purpose"):
            p(PARAMS)  # the restarted child crashes at round 1 again: the second failure is final
    finally:
        p.close()
    assert (tmp_path / "starts").read_text().count("started") == 2
    assert any(e == "reference_restart" for e, _ in events)


def test_a_hung_child_misses_its_deadline_and_is_killed(tmp_path):
    p = _proc(tmp_path, "--hang-at", "0")
    p.start()
    p.deadline_s = 2.0
    t0 = time.monotonic()
    with pytest.raises(ReferenceFailed, match=r"no answer within reference.deadline_s = 2s"):
        p(PARAMS)
    assert time.monotonic() - t0 < 10  # not restarted into a second wait
    assert p._proc is None
    assert (tmp_path / "starts").read_text().count("started") == 1


def test_a_reference_of_the_wrong_shape_is_refused(tmp_path):
    p = _proc(tmp_path, "--bad-shape-at", "0")
    p.start()
    try:
        with pytest.raises(ReferenceFailed, match=r"Δ_ref has tensors .*must be the silos' models"):
            p(PARAMS)
    finally:
        p.close()


def test_a_child_that_cannot_start_names_its_log(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('no such public set', file=sys.stderr); sys.exit(2)"]
    p = ReferenceProcess(tmp_path / "aggregator.toml", tmp_path / "ref", command=cmd, deadline_s=20)
    with pytest.raises(ReferenceFailed, match=r"exited \(code 2\).*no such public set.*reference\.log"):
        p.start()
    p2 = ReferenceProcess(tmp_path / "aggregator.toml", tmp_path / "ref2", command=["/nonexistent/python"])
    with pytest.raises(ReferenceFailed, match="cannot start"):
        p2.start()


def test_an_unreadable_answer_is_refused_not_guessed(tmp_path):
    cmd = [sys.executable, "-c", "print('loading...'); print('fedalign-reference {not json', flush=True)"]
    p = ReferenceProcess(tmp_path / "aggregator.toml", tmp_path / "ref", command=cmd, deadline_s=20)
    with pytest.raises(ReferenceFailed, match=r"unreadable answer"):
        p.start()  # the unprefixed line is ignored; the prefixed one that is not JSON fails
    p.close()


def test_a_symlinked_reference_file_is_refused(tmp_path):
    p = _proc(tmp_path, "--symlink-at", "1")
    p.start()
    try:
        p(PARAMS)  # round 0: a regular file
        dst = tmp_path / "ref" / "reference.safetensors"
        with pytest.raises(ReferenceFailed, match=rf"round 1: {dst} is a symlink; refusing to follow it"):
            p(PARAMS)
    finally:
        p.close()
    assert (tmp_path / "starts").read_text().count("started") == 1  # final: not restarted


def test_the_child_log_is_private_and_capped(tmp_path, monkeypatch):
    from fedalign.aggregator import reference

    monkeypatch.setattr(reference, "LOG_MAX_BYTES", 4096)
    p = _proc(tmp_path, "--stderr-bytes", "200000")
    p.start()
    p.close()
    log = tmp_path / "ref" / "reference.log"
    assert log.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ref").stat().st_mode & 0o777 == 0o700
    text = log.read_text()
    assert len(text) < 4096 + 200
    assert text.splitlines()[-1] == "[reference.log reached 4096 bytes: the rest of the child's output is dropped]"
