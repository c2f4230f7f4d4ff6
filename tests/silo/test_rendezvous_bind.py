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
