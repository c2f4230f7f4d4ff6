"""The docs cite only what is in the repository, and what they cite exists.

- No file refers to the design document that used to live outside the repository (the team's
  DESIGN file or anything under ``../shared``): the rationale is docs/design.md.
- Every "docs/design.md §N" (or "§N-§M") names a section docs/design.md has.
- docs/architecture.md's table of direct imports between rooms is the graph the import-rule test
  builds from the code.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "runs", ".cache", "build"}

# Built from pieces so that this file does not match itself.
_OLD = "DES" + "IGN"
STALE = re.compile(
    r"\b" + _OLD + r"\b"  # DESIGN, DESIGN.md, DESIGN §5, DESIGN's
    + "|" + re.escape("../" + "shared")
)
SECTION = r"(?:§|\\u00a7)"  # JSON files escape § as \u00a7
REF = re.compile(r"docs/design\.md\s*" + SECTION + r"(\d+)(?:\s*[-–]\s*" + SECTION + r"?(\d+))?")
LOCAL_REF = re.compile(r"(?<![\w/])§(\d+)")


def _repo_files() -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        out += [Path(dirpath) / f for f in filenames]
    return sorted(out)


def _texts() -> list[tuple[Path, str]]:
    out = []
    for path in _repo_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary: images, weights
        out.append((path, data.decode("utf-8", errors="replace")))
    return out


def _sections() -> set[int]:
    return {int(n) for n in re.findall(r"^## §(\d+) ", DESIGN.read_text(), re.M)}


def test_no_file_refers_to_the_design_document_outside_the_repository():
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:120]}"
             for p, text in _texts() if p != Path(__file__).resolve()
             for i, line in enumerate(text.splitlines(), 1) if STALE.search(line)]
    assert not found, "cite docs/design.md §N instead:\n" + "\n".join(found)


def test_design_md_has_numbered_sections_in_order():
    heads = [int(n) for n in re.findall(r"^## §(\d+) ", DESIGN.read_text(), re.M)]
    assert heads == list(range(1, len(heads) + 1)) and len(heads) >= 10, heads


def test_every_design_section_reference_exists():
    sections = _sections()
    bad, seen = [], 0
    for path, text in _texts():
        for i, line in enumerate(text.splitlines(), 1):
            for m in REF.finditer(line):
                seen += 1
                lo = int(m.group(1))
                hi = int(m.group(2) or lo)
                missing = [n for n in range(lo, hi + 1) if n not in sections] or ([] if lo <= hi else [hi])
                if missing:
                    bad.append(f"{path.relative_to(ROOT)}:{i}: {m.group(0)} (no §{missing[0]})")
    assert seen >= 40, f"only {seen} references found: is the pattern still right?"
    assert not bad, "\n".join(bad)


def test_design_md_cites_its_own_sections_correctly():
    sections = _sections()
    bad = [m.group(0) for m in LOCAL_REF.finditer(DESIGN.read_text()) if int(m.group(1)) not in sections]
    assert not bad, bad


def test_the_reference_check_can_fail(tmp_path):
    assert REF.search("see docs/design.md " + "§12").group(1) == "12"  # split: this file is scanned too
    m = REF.search('"label": "previous-step reference (docs/design.md \\u00a74 blend)"')
    assert m and m.group(1) == "4"
    m = REF.search("Fed-CMP math (docs/design.md §3-§4)")
    assert (m.group(1), m.group(2)) == ("3", "4")
    assert STALE.search("the rules of " + _OLD + " §2") and STALE.search(_OLD + ".md says why")
    assert STALE.search("see .." + "/shared/x") and not STALE.search("the first design's default")


def _import_rules():
    spec = importlib.util.spec_from_file_location("_import_rules", ROOT / "tests" / "test_import_rules.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_architecture_import_table_is_the_code_s_graph():
    rules = _import_rules()
    edges, _, _ = rules._graph()
    actual: dict[str, set[str]] = {r: set() for r in rules.ROOMS}
    for a, targets in edges.items():
        for b in targets:
            ra, rb = rules._room(a), rules._room(b)
            if ra in actual and rb in actual and ra != rb:
                actual[ra].add(rb)
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("| room | imports (direct edges) |", 1)[1].split("\n\n", 1)[0]
    drawn: dict[str, set[str]] = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        drawn[cells[0].strip("`")] = set() if cells[1] in ("–", "-", "") else {x.strip() for x in cells[1].split(",")}
    assert drawn == actual, (
        "docs/architecture.md's import table differs from the code: "
        + "; ".join(f"{r}: drawn {sorted(drawn.get(r, ()))}, code {sorted(actual[r])}"
                    for r in sorted(set(actual) | set(drawn)) if drawn.get(r) != actual.get(r))
    )
