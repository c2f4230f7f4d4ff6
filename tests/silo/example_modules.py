"""Load one module of an example (``examples/<example>/<name>.py``) under a name of its own, for the
tests: several examples have a ``run.py``, and they import their siblings and examples/common_real.py
by plain name. A plain module (not the conftest) so test files import it by name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(example: str, name: str) -> ModuleType:
    folder = EXAMPLES / example
    for p in (str(folder), str(EXAMPLES)):
        if p not in sys.path:
            sys.path.insert(0, p)
    spec = importlib.util.spec_from_file_location(f"examples_{example}_{name}", folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod
