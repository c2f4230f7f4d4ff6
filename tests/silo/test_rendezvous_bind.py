"""The rendezvous store a rank hosts listens on loopback only by default (issue #26 item 7):
torch's TCPStore alone listens on every interface, with no authentication."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, torch
from fedalign.silo import distributed as D
g = D.init_from_env("cpu")
t = torch.ones(1)
g.all_reduce_sum_([t])
print(json.dumps({"bind": D._listen_sock.getsockname()[0], "sum": t.item()}))
g.close(clean=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_USE_AGENT_STORE"}
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               **extra)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_rank_0_hosts_the_store_on_loopback_by_default():
    r = _run({})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"bind": "127.0.0.1", "sum": 1.0}


def test_an_unusable_bind_address_is_one_clear_error():
    r = _run({"FEDALIGN_DIST_BIND": "192.0.2.1"})  # TEST-NET-1: not an address of this host
    assert r.returncode != 0
    assert "cannot listen for the other ranks on 192.0.2.1" in r.stderr
    assert "set FEDALIGN_DIST_BIND to an address of this host" in r.stderr


# -- shared secret: a rank that cannot prove it holds the rendezvous secret is refused -----------------

PROBE2 = """
import json, torch
from fedalign.silo import distributed as D
try:
    g = D.init_from_env("cpu")
except Exception as e:
    print(json.dumps({"error": type(e).__name__, "msg": str(e)}))
    D.exit_process(3)  # as the silo CLI ends a rank (skips torch's C++ teardown, which can abort)
    raise SystemExit(3)
t = torch.ones(1)
g.all_reduce_sum_([t])
print(json.dumps({"sum": t.item()}))
g.close(clean=True)
D.exit_process(0)
"""


def _pair(secrets: list[str | None]) -> list[tuple[int, dict]]:
    port = str(_free_port())
    procs = []
    for rank, secret in enumerate(secrets):
        env = {k: v for k, v in os.environ.items() if k not in ("TORCHELASTIC_USE_AGENT_STORE", "FEDALIGN_DIST_SECRET_FILE")}
        env.update(RANK=str(rank), WORLD_SIZE=str(len(secrets)), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, FEDALIGN_DIST_TIMEOUT_S="60")
        if secret is not None:
            env["FEDALIGN_DIST_SECRET_FILE"] = secret
        procs.append(subprocess.Popen([sys.executable, "-c", PROBE2], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        so, se = p.communicate(timeout=180)
        lines = so.strip().splitlines()
        out.append((p.returncode, json.loads(lines[-1]) if lines else {"stderr": se[-2000:]}))
    return out


def _secret(path: Path, data: bytes, mode: int = 0o600) -> str:
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def test_ranks_on_one_host_share_a_fresh_secret_by_default():
    assert [o for _, o in _pair([None, None])] == [{"sum": 2.0}, {"sum": 2.0}]


def test_a_rank_with_another_secret_is_refused_by_every_rank(tmp_path):
    a = _secret(tmp_path / "a.key", os.urandom(32))
    b = _secret(tmp_path / "b.key", os.urandom(32))
    res = _pair([a, b])
    assert [rc for rc, _ in res] == [3, 3], res
    assert res[0][1]["error"] == "DistributedError"
    assert "rank(s) 1 did not prove they hold the rendezvous secret" in res[0][1]["msg"]
    assert "rank(s) 0 did not prove" in res[1][1]["msg"]
    # the same file on both ranks is accepted
    assert [o for _, o in _pair([a, a])] == [{"sum": 2.0}, {"sum": 2.0}]


def test_a_secret_others_can_read_or_a_symlink_is_refused(tmp_path):
    loose = _secret(tmp_path / "loose.key", os.urandom(32), 0o644)
    res = _pair([loose, loose])
    assert [rc for rc, _ in res] == [3, 3], res
    assert "mode 0644" in res[0][1]["msg"] and "chmod 600" in res[0][1]["msg"]
    good = _secret(tmp_path / "good.key", os.urandom(32))
    (tmp_path / "link.key").symlink_to(good)
    res = _pair([good, str(tmp_path / "link.key")])
    assert [rc for rc, _ in res] == [3, 3], res
    assert "a symlink is refused" in res[1][1]["msg"]
    assert "rank(s) 1 did not prove" in res[0][1]["msg"]
