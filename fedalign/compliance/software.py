"""The software a run's numbers depend on, recorded in each ledger's ``run_start`` entry.

The accountant's ε comes from Opacus, the masks and signatures from cryptography and TenSEAL, the
model from torch and transformers: an auditor who recomputes a figure needs their versions, and the
same code under other versions has given other figures (examples/clipart's table, seed 0's FedAvg
4.642 -> 4.603, results/notes/clipart_sweep.md)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("fedalign", "torch", "opacus", "transformers", "cryptography", "tenseal", "pyzmq", "numpy")


def software_versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Installed version of each of :data:`PACKAGES` and ``extra`` (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in (*PACKAGES, *extra):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
