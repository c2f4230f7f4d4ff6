"""The one place that sets process defaults, applied by every entry point (the three CLIs, the
scripts, the examples, the benchmarks, the world build's worker processes): one thread per
process and hubs offline.

On 2 cores, two processes with 2 torch threads each were measured 50x slower than with one; and
the toolkit never downloads a model or data set at run time. Existing environment values win;
``FEDALIGN_THREADS`` (default: ``OMP_NUM_THREADS``, itself defaulting to 1) sets torch's threads.
"""

from __future__ import annotations

import os

__all__ = ["PROCESS_ENV_DEFAULTS", "apply_process_defaults", "torch_threads"]

PROCESS_ENV_DEFAULTS = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def torch_threads() -> int:
    """The torch thread count this process should use."""
    return max(1, int(os.environ.get("FEDALIGN_THREADS") or os.environ.get("OMP_NUM_THREADS") or 1))


def apply_process_defaults(*, torch_too: bool = True) -> None:
    """Set each of :data:`PROCESS_ENV_DEFAULTS` unless the environment already has it, then (if
    ``torch_too`` and torch is installed) torch's thread count."""
    for key, value in PROCESS_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if torch_too:
        try:
            import torch
        except ImportError:  # crypto-only installs need no torch
            return
        torch.set_num_threads(torch_threads())
