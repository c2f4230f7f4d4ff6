"""Keys, roster, θ_0 and configs of a toy federation on loopback, shared by the e2e tests and the
fault harness (one aggregator.toml and one silo.toml per silo in ``root``), and the bookkeeping of
the processes started on it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import save_file
from fedalign.lab.toy import small_toy as toy

from fedalign.host.process import apply_process_defaults
from fedalign.protocol.keys import write_keypair
from fedalign.silo.keys import keygen_silo

SHARD = 64  # silo weight cap (data.shard_size): weight = min(32, 64) / 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_federation(root: Path, names: list[str], rounds: int, strategy: str, options: dict, *,
                     train_deadline_s: float, step_deadline_s: float, heartbeat_timeout_s: float,
                     aggregator_timeout_s: float, max_failed_rounds: int | None = None, roster_wait_s: float = 60,
                     heartbeat_interval_s: float = 0.5, neighbours: int | None = None):
    """Write everything the processes read; return the toy problem the silos train. ``neighbours``:
    SecAgg+'s neighbour graph of that degree instead of every pair."""
    keys = root / "keys"
    write_keypair(keys, "aggregator", role="aggregator")
    (root / "roster.toml").write_text("\n".join(keygen_silo(keys, s).roster_entry for s in names))
    port = free_port()
    fed = toy(len(names))
    save_file(fed.init_params(), str(root / "init.safetensors"))
    opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
    retries = f"max_failed_rounds = {max_failed_rounds}\n" if max_failed_rounds is not None else ""
    graph = f"[secure_sum]\nneighbours = {neighbours}\n" if neighbours is not None else ""
    # Fed-CMP's default reliability "reference": the coordinator's public reference from a child process
    # speaking `silo reference`'s protocol over the toy (the lab's hook, round by round)
    reference = ""
    if strategy == "fedcmp" and options.get("reliability", "reference") == "reference":
        cmd = [sys.executable, "-m", "fedalign.lab.loopback.reference", "--toy", str(len(names))]
        reference = f"[reference]\ncommand = {json.dumps(cmd)}\ndeadline_s = 60\n"
    (root / "aggregator.toml").write_text(f"""
[server]
bind = "tcp://127.0.0.1:{port}"
secret_key = "keys/aggregator.key_secret"
roster = "roster.toml"
[run]
rounds = {rounds}
min_silos = 3
train_deadline_s = {train_deadline_s}
step_deadline_s = {step_deadline_s}
heartbeat_timeout_s = {heartbeat_timeout_s}
roster_wait_s = {roster_wait_s}
{retries}{graph}[strategy]
name = "{strategy}"
options = {{ {opts} }}
[init]
params = "init.safetensors"
{reference}[output]
dir = "agg"
""")
    for s in names:
        (root / f"{s}.toml").write_text(f"""
[data]
shard_size = {SHARD}
[output]
dir = "{s}"
[federation]
aggregator = "tcp://127.0.0.1:{port}"
silo_id = "{s}"
aggregator_public_key = "keys/aggregator.key"
secret_key = "keys/{s}.key_secret"
identity_key = "keys/{s}.identity"
roster = "roster.toml"
min_silos = 3
heartbeat_interval_s = {heartbeat_interval_s}
aggregator_timeout_s = {aggregator_timeout_s}
[strategy]
name = "{strategy}"
options = {{ {opts} }}
""")
    return fed


class LoopbackProcesses:
    """A written federation in ``root`` (:func:`write_federation`) and the processes started on it:
    each one's output in ``<log>`` under ``root``, every one killed and reaped by :meth:`close`."""

    def __init__(self, root: Path, n_silos: int, rounds: int, strategy: str, options: dict, **timings) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.n, self.rounds = root, n_silos, rounds
        self.strategy, self.options = strategy, dict(options)
        self.names = [f"silo-{i}" for i in range(n_silos)]
        self.procs: list[subprocess.Popen] = []
        apply_process_defaults()  # one thread, offline hubs: the children inherit them
        self.env = dict(os.environ)
        self.fed = write_federation(root, self.names, rounds, strategy, options, **timings)

    def start(self, cmd: list[str], log: str) -> subprocess.Popen:
        with open(self.root / log, "ab") as f:
            p = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-1500:]
                         for p in sorted(self.root.glob("*.log")))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def contributions(self, silo: str, rnd: int, phase: int) -> dict[str, np.ndarray]:
        with np.load(self.root / silo / f"contrib-{rnd}-{phase}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
