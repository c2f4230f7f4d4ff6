"""`aggregator serve` (the real CLI, ZeroMQ, checkpoints, ledger) that SIGKILLs itself at one step.

    python -m fedalign.lab.loopback.fault_aggregator --kill-at POINT serve --config aggregator.toml --quiet

Everything after ``--kill-at POINT`` is the aggregator's own command line. The process runs
unchanged until the first time it reaches POINT after its round loop started (so the ledger
reconciliation at start is never interrupted), then sends itself SIGKILL: the same as
``kill -9`` from outside, but at an exact step instead of a racy moment. Points (KILL_POINTS):

- ``round_start``: RoundStart sent to every silo, nothing received yet;
- ``train``: the first UpdateReady of the round received (others still training);
- ``p<phase>:<Type>``: the aggregator's secure sum of that strategy phase has just handled the
  first silo message of that type (KeyAdvertisement, EncryptedShares, MaskedInput,
  ConsistencySignature, UnmaskResponse), i.e. in the middle of that protocol step;
- ``checkpoint_mid``: the round's tensors file written, ``state.json`` (the commit point) not yet;
- ``after_checkpoint``: ``state.json`` written, the ledger's ``round_committed`` not yet appended;
- ``after_ledger``: the ledger entry appended, RoundEnd not yet sent;
- ``after_round_end``: RoundEnd sent (the round fully committed), the next round not started.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SUM_TYPES = ("KeyAdvertisement", "EncryptedShares", "MaskedInput", "ConsistencySignature", "UnmaskResponse")
KILL_POINTS = (
    "round_start", "train",
    *(f"p0:{t}" for t in SUM_TYPES), *(f"p1:{t}" for t in SUM_TYPES),
    "checkpoint_mid", "after_checkpoint", "after_ledger", "after_round_end",
)


def _die(point: str) -> None:
    sys.stderr.write(f"fault_aggregator: SIGKILL at {point}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    """Patch the aggregator's code so that the process kills itself at ``point``."""
    if point not in KILL_POINTS:
        raise SystemExit(f"--kill-at: unknown point {point!r}; one of {', '.join(KILL_POINTS)}")
    from fedalign.aggregator import checkpoint as C
    from fedalign.aggregator import rounds as R
    from fedalign.crypto.secure_sum import AggregatorSecureSum
    from fedalign.compliance.eventlog import EventLog
    from fedalign.compliance.ledger import Ledger
    from fedalign.protocol.messages import UpdateReady

    armed = threading.Event()  # set once the round loop runs (never during reconciliation at start)
    where = {"phase": -1, "commit": False}

    real_emit = EventLog.emit

    def emit(self, event, **f):
        rec = real_emit(self, event, **f)
        if event == "run_started":
            armed.set()
        elif armed.is_set() and event == "round_started" and point == "round_start":
            _die(point)
        elif armed.is_set() and event == "round_committed" and point == "after_round_end":
            _die(point)
        return rec

    EventLog.emit = emit

    real_next = R.Coordinator._next

    def _next(self, deadline):
        env = real_next(self, deadline)
        if point == "train" and armed.is_set() and env is not None and isinstance(env.message, UpdateReady):
            _die(point)
        return env

    R.Coordinator._next = _next

    real_sum = R.Coordinator._secure_sum

    def _secure_sum(self, t, phase, *a, **kw):
        where["phase"] = phase
        try:
            return real_sum(self, t, phase, *a, **kw)
        finally:
            where["phase"] = -1

    R.Coordinator._secure_sum = _secure_sum

    real_handle = AggregatorSecureSum.handle

    def handle(self, sender, msg):
        out = real_handle(self, sender, msg)
        if armed.is_set() and point == f"p{where['phase']}:{type(msg).__name__}":
            _die(point)
        return out

    AggregatorSecureSum.handle = handle

    real_atomic = C._atomic_write

    def _atomic_write(path, write):
        if point == "checkpoint_mid" and armed.is_set() and os.path.basename(str(path)) == "state.json":
            _die(point)
        return real_atomic(path, write)

    C._atomic_write = _atomic_write

    real_save = C.CheckpointStore.save

    def save(self, state):
        out = real_save(self, state)
        if point == "after_checkpoint" and armed.is_set():
            _die(point)
        return out

    C.CheckpointStore.save = save

    real_append = Ledger.append

    def append(self, kind, *a, **kw):
        out = real_append(self, kind, *a, **kw)
        if point == "after_ledger" and armed.is_set() and kind == "round_committed":
            _die(point)
        return out

    Ledger.append = append


def main() -> None:
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "--kill-at":
        if args[1] != "none":
            install(args[1])
        args = args[2:]
    from fedalign.aggregator.cli import main as cli_main

    sys.argv = ["aggregator", *args]
    cli_main()


if __name__ == "__main__":
    main()
