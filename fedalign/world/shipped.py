"""The default world, shipped: the built models of ``WorldSpec()`` travel with the package, so a
fresh clone's first run loads them instead of pretraining for two minutes.

Reproducible, not trusted: the files are what :func:`fedalign.world.build.build_world` writes for
the default spec and this code version (the directory is named by that cache key, so any edit to a
model-shaping source makes it stale and the world is built as before), their SHA-256s are listed
in ``SHA256SUMS`` and checked before use, and ``python -m fedalign.world.ship --check`` rebuilds
the world from the code and compares every tensor with the shipped one (``--write`` ships a new build).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

__all__ = ["SHIPPED", "shipped_world", "write_shipped", "compare_worlds", "shipped_files"]

SHIPPED = Path(__file__).parent / "shipped"
_SUMS = "SHA256SUMS"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_files(root: Path) -> list[Path]:
    """Every file of a world directory but its SHA256SUMS, in order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != _SUMS)


def shipped_world(key: str) -> Path | None:
    """The shipped copy of world ``key`` (``world-<key>``) when there is one and every file matches
    its listed SHA-256; None otherwise (then the world is built)."""
    root = SHIPPED / f"world-{key}"
    sums = root / _SUMS
    if not sums.is_file():
        return None
    listed = {}
    for line in sums.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    present = {p.relative_to(root).as_posix(): p for p in shipped_files(root)}
    if set(listed) != set(present) or any(_digest(present[r]) != d for r, d in listed.items()):
        return None
    return root


def write_shipped(world_dir: Path, key: str) -> Path:
    """Copy a built world into the package as ``shipped/world-<key>`` (older shipped worlds removed)
    with its ``SHA256SUMS``."""
    if SHIPPED.exists():
        shutil.rmtree(SHIPPED)
    dest = SHIPPED / f"world-{key}"
    shutil.copytree(world_dir, dest)
    lines = [f"{_digest(p)}  {p.relative_to(dest).as_posix()}" for p in shipped_files(dest)]
    (dest / _SUMS).write_text("\n".join(lines) + "\n")
    return dest


def compare_worlds(a: Path, b: Path) -> dict[str, float]:
    """Per model, the largest absolute difference between two worlds' tensors (0.0: identical)."""
    from safetensors.torch import load_file

    out = {}
    for part in ("vision", "lm"):
        x, y = load_file(str(a / part / "model.safetensors")), load_file(str(b / part / "model.safetensors"))
        if set(x) != set(y):
            raise ValueError(f"{part}: the two worlds hold different tensors")
        out[part] = max(float((x[k].double() - y[k].double()).abs().max()) if x[k].numel() else 0.0 for k in x)
    return out
