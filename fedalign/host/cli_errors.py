"""One table from exception classes to exit codes, and a runner that prints one clear line.

Every CLI (``silo``, ``aggregator``, ``fedalign-lab``) runs its commands through :func:`run_cli`:
an expected error (any :class:`~fedalign.protocol.errors.FedAlignError` or
:class:`~fedalign.crypto.errors.SecureSumError`, or a class registered here) becomes one line on
stderr and its exit code; the traceback is shown only under ``--debug``. The table is the one
in docs/silo.md.
"""

from __future__ import annotations

import sys
import traceback
from typing import Callable, TextIO, TypeVar

from fedalign.crypto import errors as C
from fedalign.protocol import errors as E

__all__ = ["EXIT_CODES", "UNEXPECTED_EXIT", "exit_code_for", "register_exit_code", "format_error", "run_cli"]

UNEXPECTED_EXIT = 70  # EX_SOFTWARE: a bug, not bad input

# Most specific first; exit_code_for walks the MRO so subclasses find their nearest entry.
EXIT_CODES: dict[type[BaseException], int] = {
    E.ConfigError: 2,
    E.DataError: 3,
    E.ModelLoadError: 4,
    E.PrivacyBudgetExceeded: 5,
    E.PrivacyError: 6,
    E.WireFormatError: 7,
    E.RoundAborted: 8,
    E.ProtocolError: 9,
    E.InsecureModeRefused: 10,
    E.CheckpointError: 11,
    E.StoppedEarly: 18,
    E.DistributedError: 19,
    E.ReferenceFailed: 20,
    C.EncodingOverflow: 12,
    C.InsecurePlaintextRefused: 17,
    C.SecureSumUsageError: 13,
    C.SecAggAborted: 14,
    C.CryptoError: 15,
    C.SecureSumError: 16,
    E.FedAlignError: 1,
    KeyboardInterrupt: 130,
}

T = TypeVar("T")


def register_exit_code(exc_type: type[BaseException], code: int) -> None:
    """Add a class defined outside fedalign (a plugin's) to the table."""
    if code in (0, UNEXPECTED_EXIT):
        raise ValueError(f"exit code {code} is reserved")
    EXIT_CODES[exc_type] = code


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of ``exc``'s nearest class in the table, or None for an unexpected error."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return None


def format_error(exc: BaseException) -> str:
    """One line: the class name and the message, newlines folded; in a process of a multi-process
    run (torchrun's WORLD_SIZE > 1) the message starts with its rank."""
    import os

    msg = " ".join(str(exc).split()) or "(no message)"
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK")
    if rank is not None and world not in ("", "1") and not msg.startswith("rank "):
        msg = f"rank {rank} of {world}: {msg}"
    return f"error: {type(exc).__name__}: {msg}"


def run_cli(fn: Callable[[], T], *, debug: bool = False, stream: TextIO | None = None) -> T:
    """Run ``fn``; on an error print one line (traceback only if ``debug``) and exit non-zero.

    Unexpected exceptions exit with :data:`UNEXPECTED_EXIT` and say that ``--debug`` shows more.
    ``SystemExit`` (e.g. from Typer) passes through untouched.
    """
    out = stream if stream is not None else sys.stderr
    try:
        return fn()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the one place that maps every error
        code = exit_code_for(exc)
        if debug:
            traceback.print_exc(file=out)
        line = format_error(exc)
        if code is None:
            code = UNEXPECTED_EXIT
            if not debug:
                line += "  (unexpected; rerun with --debug for the traceback)"
        print(line, file=out)
        raise SystemExit(code) from None
