"""A silo process for the end-to-end tests: the real runtime, ZeroMQ and crypto, a toy trainer.

    python -m fedalign.lab.loopback.silo --config silo.toml --index 0 --n-silos 4 [--die-after EncryptedShares:1]
                                 [--stall-sum 1:3]

It trains ``fedalign.lab.toy.small_toy`` (deterministic per silo and round), writes each contribution it
feeds into a secure sum to ``<out>/contrib-<round>-<phase>.npz`` (its own data, for the test to
check the aggregator's sums), and with ``--die-after TYPE:PHASE`` SIGKILLs itself right after
sending that message in round 0, so it dies in the middle of a secure sum; ``--stall-sum R:S``
makes it wait S seconds before joining round R's first sum, so that sum is surely in flight.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fedalign.host.process import apply_process_defaults
from fedalign.lab.toy import small_toy as toy


class ToyTrainer:
    """Deterministic per silo and round (the simulator's updates); a round trained again, in this
    process or after a restart, draws a fresh batch, as a real silo draws a fresh shard."""

    def __init__(self, index: int, n_silos: int, state: Path) -> None:
        self.fed, self.index, self.state = toy(n_silos), index, state

    def train(self, round_id, params, *, prox_mu=0.0):
        import json

        from fedalign.silo.store import TrainedUpdate

        seen = json.loads(self.state.read_text()) if self.state.exists() else {}
        k = seen[str(round_id)] = seen.get(str(round_id), -1) + 1
        self.state.write_text(json.dumps(seen))
        res = self.fed.local_update(params, self.index, round_id + 100_003 * k, 0.0)
        return TrainedUpdate(res.delta, res.n_samples, None, {"train_loss": float(res.train_loss)})


def run_toy_silo(add_args: Callable[[argparse.ArgumentParser], None],
                 install_faults: Callable[[argparse.Namespace, Any], None]) -> None:
    """A silo process over the toy: ``--config``, ``--index``, ``--n-silos`` and the caller's own
    arguments (``add_args``); ``install_faults(args, silo_package)`` patches the runtime before it
    starts; each contribution is dumped to ``<out>/contrib-<round>-<phase>.npz``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--n-silos", type=int, required=True)
    add_args(ap)
    a = ap.parse_args()
    apply_process_defaults()

    import fedalign.silo.client  # noqa: F401 - the fault hooks patch its ZmqClient
    import fedalign.silo.participant  # noqa: F401 - ... and the participant
    from fedalign import silo
    from fedalign.host.cli_errors import run_cli
    from fedalign.protocol.config.silo import load_silo_config
    from fedalign.silo.federation import run_federated

    cfg = load_silo_config(a.config)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    install_faults(a, silo)

    def dump(round_id, phase, inputs):
        np.savez(out / f"contrib-{round_id}-{phase}.npz", **inputs)

    res = run_cli(lambda: run_federated(cfg, trainer=ToyTrainer(a.index, a.n_silos, out / "trained.json"),
                                        on_contribution=dump))
    print(f"{cfg.federation.silo_id}: {res.reason}, rounds_done {res.rounds_done}, committed {res.committed}")


def _args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--die-after", default=None)
    ap.add_argument("--stall-sum", default=None, help="ROUND:SECONDS: wait this long before joining that round's sums")


def _faults(a: argparse.Namespace, silo: Any) -> None:
    if a.die_after:
        kind, phase = a.die_after.split(":")
        real_send = silo.client.ZmqClient.send

        def send(self, env):
            n = real_send(self, env)
            if type(env.message).__name__ == kind and env.phase == int(phase) and env.round == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            return n

        silo.client.ZmqClient.send = send

    if a.stall_sum:
        rnd, secs = a.stall_sum.split(":")
        real_join = silo.participant.SiloParticipant._on_sum_start
        stalled = []

        def join(self, env, m):
            if m.round == int(rnd) and m.phase == 0 and not stalled:  # once
                stalled.append(1)
                time.sleep(float(secs))
            return real_join(self, env, m)

        silo.participant.SiloParticipant._on_sum_start = join


def main() -> None:
    run_toy_silo(_args, _faults)


if __name__ == "__main__":
    main()
