"""The dependency rules of docs/design.md §2 and docs/architecture.md, checked over transitive imports.

Every module of every room is parsed with ``ast``; every import (top-level or inside a function,
absolute or relative) is an edge. A room is a package directly under ``fedalign``. A rule is
broken when a room reaches a forbidden room or third-party module through any chain of imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The installed package: repository folder -> dotted name (pyproject's package-dir).
FOLDERS = {"fedalign": "fedalign", "silo": "fedalign.silo", "aggregator": "fedalign.aggregator",
           "crypto": "fedalign.crypto"}

ROOMS = ("protocol", "projector", "compliance", "fedcmp", "host", "world", "crypto", "silo", "aggregator", "lab")

# room -> rooms and third-party top-level modules it must never reach, transitively.
FORBIDDEN = {
    "silo": {"aggregator", "lab"},
    "aggregator": {"silo", "lab", "world"},
    "crypto": {"protocol", "compliance", "fedcmp", "host", "world", "silo", "aggregator", "lab", "torch"},
    "protocol": {"projector", "compliance", "fedcmp", "world", "silo", "aggregator", "lab", "torch"},
    "projector": {"compliance", "fedcmp", "host", "world", "silo", "aggregator", "lab", "crypto", "zmq", "transformers"},
    "compliance": {"fedcmp", "host", "world", "silo", "aggregator", "lab", "torch"},
    "fedcmp": {"compliance", "world", "silo", "aggregator", "lab", "crypto", "zmq", "socket", "msgpack", "tenseal"},
    "host": {"fedcmp", "world", "silo", "aggregator", "lab"},  # torch: only to set its threads, if installed
    "world": {"compliance", "silo", "aggregator", "lab", "crypto", "zmq"},
    "lab": set(),
}

OLD_TOP_LEVEL = {"common", "silo", "aggregator", "crypto", "simulation"}


def _modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for folder, dotted in FOLDERS.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([dotted, *parts])] = path
    return mods


def _imports_of(name: str, path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # ``from pkg import sub`` may import a submodule
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def _graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, Path], dict[tuple[str, str], int]]:
    mods = _modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    lines: dict[tuple[str, str], int] = {}
    for name, path in mods.items():
        for lineno, target in _imports_of(name, path):
            if target.startswith("fedalign"):
                # the longest known module the import names, and its packages (they run on import)
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    cand = ".".join(parts[:i])
                    if cand in mods:
                        edges[name].add(cand)
                        lines.setdefault((name, cand), lineno)
            else:
                top = target.split(".")[0]
                edges[name].add("ext:" + top)
                lines.setdefault((name, "ext:" + top), lineno)
    return edges, mods, lines


def _room(mod: str) -> str | None:
    if mod.startswith("ext:"):
        return mod[4:]
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def _chain(edges: dict[str, set[str]], start: str, bad: set[str]) -> list[str] | None:
    """The shortest import chain from ``start`` to a module in a forbidden room, or None."""
    prev: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        cur = queue.pop(0)
        if cur != start and _room(cur) in bad:
            chain = [cur]
            while prev[chain[-1]] is not None:
                chain.append(prev[chain[-1]])
            return chain[::-1]
        for nxt in sorted(edges.get(cur, ())):
            if nxt not in prev:
                prev[nxt] = cur
                queue.append(nxt)
    return None


def _violations(root: Path = ROOT) -> list[str]:
    edges, mods, _ = _graph(root)
    found = []
    for mod in mods:
        room = _room(mod)
        if room not in FORBIDDEN:
            continue
        chain = _chain(edges, mod, FORBIDDEN[room])
        if chain:
            found.append(" -> ".join(c.removeprefix("ext:") for c in chain))
    return found


def test_every_package_folder_is_a_room_with_rules():
    rooms = {p.name for p in (ROOT / "fedalign").iterdir() if (p / "__init__.py").exists()}
    assert rooms | {"silo", "aggregator", "crypto"} == set(ROOMS) == set(FORBIDDEN)


def test_no_room_reaches_a_forbidden_one_transitively():
    bad = _violations()
    assert not bad, "\n".join(bad)


def test_rooms_form_no_cycle():
    edges, mods, _ = _graph()
    room_edges: dict[str, set[str]] = {r: set() for r in ROOMS}
    for a, targets in edges.items():
        for b in targets:
            ra, rb = _room(a), _room(b)
            if ra in room_edges and rb in room_edges and ra != rb:
                room_edges[ra].add(rb)
    # depth-first search for a back edge
    state: dict[str, int] = {}

    def visit(r: str, path: list[str]) -> list[str] | None:
        state[r] = 1
        for nxt in sorted(room_edges[r]):
            if state.get(nxt) == 1:
                return path + [r, nxt]
            if nxt not in state:
                found = visit(nxt, path + [r])
                if found:
                    return found
        state[r] = 2
        return None

    for r in ROOMS:
        if r not in state:
            cycle = visit(r, [])
            assert cycle is None, "room cycle: " + " -> ".join(cycle)


def test_nothing_imports_the_old_top_level_names():
    found = []
    for folder in ["fedalign", "silo", "aggregator", "crypto", "tests", "scripts", "benchmarks", "examples"]:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}"
                          for n in names if n.split(".")[0] in OLD_TOP_LEVEL]
    assert not found, "\n".join(found)


def test_the_checker_sees_a_transitive_violation(tmp_path):
    # The checker itself must be able to fail: silo -> protocol helper -> aggregator, two hops.
    for folder, files in {
        "fedalign": {"__init__.py": "", "protocol/__init__.py": "", "protocol/helper.py": "import fedalign.aggregator.rounds\n"},
        "silo": {"__init__.py": "", "participant.py": "from fedalign.protocol import helper\n"},
        "aggregator": {"__init__.py": "", "rounds.py": ""},
        "crypto": {"__init__.py": ""},
    }.items():
        for rel, text in files.items():
            p = tmp_path / folder / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    bad = _violations(tmp_path)
    assert "fedalign.silo.participant -> fedalign.protocol.helper -> fedalign.aggregator" in bad
    assert any(b.startswith("fedalign.protocol.helper ->") for b in bad)


def test_fedcmp_math_imports_no_networking():
    edges, mods, _ = _graph()
    for mod in ("fedalign.fedcmp.core", "fedalign.fedcmp.strategies", "fedalign.fedcmp.phases"):
        assert _chain(edges, mod, {"zmq", "socket", "msgpack", "tenseal", "crypto", "transport", "wire"}) is None


@pytest.mark.parametrize("pkg", ["fedalign.crypto", "fedalign.crypto.hazmat"])
def test_crypto_needs_no_torch_at_run_time(pkg):
    import subprocess
    import sys

    code = f"import sys, {pkg}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT.parent)
