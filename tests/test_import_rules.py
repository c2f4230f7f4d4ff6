"""The dependency rules of DESIGN §2, checked by walking every module's imports with ast."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(pkg: str) -> list[tuple[str, int, str]]:
    found = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.append((str(path.relative_to(ROOT)), node.lineno, name.split(".")[0]))
    return found


RULES = [
    ("silo", {"aggregator", "simulation"}),
    ("aggregator", {"silo"}),
    ("crypto", {"silo", "aggregator", "simulation", "common", "torch"}),
    ("common", {"silo", "aggregator", "simulation", "zmq"}),
]


@pytest.mark.parametrize("pkg,forbidden", RULES, ids=[r[0] for r in RULES])
def test_package_does_not_import(pkg, forbidden):
    bad = [f"{f}:{line} imports {mod}" for f, line, mod in _imports(pkg) if mod in forbidden]
    assert not bad, "\n".join(bad)


def test_fedcmp_math_imports_no_networking():
    path = ROOT / "common" / "fedcmp.py"
    if not path.exists():
        pytest.skip("common/fedcmp.py not written yet")
    mods = {m for f, _, m in _imports("common") if f.endswith("fedcmp.py")}
    assert not mods & {"zmq", "socket", "msgpack", "crypto", "tenseal", "requests"}, mods


def test_rule_checker_sees_a_violation(tmp_path, monkeypatch):
    # The checker itself must be able to fail: plant a forbidden import and look.
    pkg = tmp_path / "silo"
    pkg.mkdir()
    (pkg / "bad.py").write_text("import aggregator.rounds\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert _imports("silo") == [("silo/bad.py", 1, "aggregator")]
