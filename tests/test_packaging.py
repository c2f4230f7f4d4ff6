"""What pip installs: one top-level name, ``fedalign``, holding every package folder of the repository."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _package_dirs() -> dict[str, Path]:
    """Every package in the repository, by installed name, from pyproject's package-dir mapping."""
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    found = {}
    for name, folder in mapping.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            dotted = ".".join([name, *rel.parts])
            if not any(dotted.startswith(other + ".") or dotted == other
                       for other in mapping if other != name and other.startswith(name + ".")):
                found[dotted] = init.parent
    return found


def test_the_package_list_names_every_package_folder():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert listed == set(_package_dirs()), "pyproject's [tool.setuptools] packages is out of date"


def test_console_scripts_point_into_the_namespace():
    scripts = _pyproject()["project"]["scripts"]
    assert set(scripts) == {"silo", "aggregator", "fedalign-lab"}
    assert all(target.startswith("fedalign.") for target in scripts.values())


@pytest.mark.slow
def test_the_wheel_holds_only_the_fedalign_namespace(tmp_path):
    import shutil

    had_build = (ROOT / "build").exists()
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path)], check=True, capture_output=True)
    finally:
        if not had_build:  # setuptools builds in the source tree; leave the checkout as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    (wheel,) = tmp_path.glob("fedalign-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"fedalign", next(t for t in top if t.endswith(".dist-info"))}, top
    for pkg in _package_dirs():
        assert pkg.replace(".", "/") + "/__init__.py" in names, pkg
    assert "fedalign/crypto/hazmat/prg.py" in names and "fedalign/silo/participant.py" in names
    shipped = [n for n in names if n.startswith("fedalign/world/shipped/")]  # the default world travels along
    assert any(n.endswith("/SHA256SUMS") for n in shipped) and any(n.endswith("lm/model.safetensors") for n in shipped)
