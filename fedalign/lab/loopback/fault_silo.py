"""A toy silo process (the real runtime over ZeroMQ) that SIGKILLs itself at one step of a sum.

    python -m fedalign.lab.loopback.fault_silo --config silo.toml --index 0 --n-silos 4 [--trigger FILE]

Like :mod:`fedalign.lab.loopback.silo` (same trainer, contributions dumped to ``<out>/contrib-<round>-<phase>.npz``).
The harness arms a kill by writing ``ROUND:PHASE:TYPE`` to the trigger file: the process then
SIGKILLs itself right after it sends its first TYPE message (KeyAdvertisement, EncryptedShares,
MaskedInput, ConsistencySignature, UnmaskResponse) of strategy phase PHASE in a round >= ROUND
whose sum for that phase has every silo of the federation as a participant (so a kill is always
one dropout out of a full sum, whatever rounds the restarted silos missed). The file is read
when the process starts and at each send, so a kill can be armed while the silo runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from fedalign.lab.loopback.silo import run_toy_silo


def _die(what: str) -> None:
    sys.stderr.write(f"fault_silo: SIGKILL after {what}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--trigger", default=None, help="file holding ROUND:PHASE:TYPE to arm a kill")


def _faults(a: argparse.Namespace, silo) -> None:
    trigger = Path(a.trigger) if a.trigger else None
    if trigger is None:
        return
    full: dict[tuple[int, int], bool] = {}  # (round, phase) -> that sum has all n silos
    real_recv = silo.client.ZmqClient.recv
    real_send = silo.client.ZmqClient.send

    def recv(self, timeout_s):
        env = real_recv(self, timeout_s)
        m = env.message if env is not None else None
        if type(m).__name__ == "SumStart":
            full[(m.round, m.phase)] = len(m.participants) == a.n_silos
        return env

    def send(self, env):
        n = real_send(self, env)
        try:
            rnd, phase, kind = trigger.read_text().strip().split(":")
        except (OSError, ValueError):
            return n
        if type(env.message).__name__ == kind and env.phase == int(phase) and env.round >= int(rnd) \
                and full.get((env.round, env.phase), False):
            _die(f"{kind} of phase {phase} in round {env.round}")
        return n

    silo.client.ZmqClient.recv = recv
    silo.client.ZmqClient.send = send


def main() -> None:
    run_toy_silo(_args, _faults)


if __name__ == "__main__":
    main()
