"""Build the world's frozen models once per spec and code version, cache them atomically,
and load them back through the generic Hugging Face path (``from_pretrained``).

Cache layout: ``$FEDALIGN_CACHE/world-<hash>/{vision,lm,spec.json}`` where the hash covers
the spec and the source of every module that shapes the models. A build writes into a
temporary sibling directory and renames it into place, so readers never see half a world.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedalign.protocol.errors import ModelLoadError
from fedalign.host.process import apply_process_defaults

from .pretrain import image_processor, pretrain_lm, pretrain_vision
from .scene import render, sample_scene
from .spec import WorldSpec
from .tokenizer import build_tokenizer

__all__ = ["WorldArtifacts", "build_world", "default_build_jobs", "world_cache_root", "code_version", "load_world"]

_SOURCES = ("scene.py", "text.py", "probes.py", "tokenizer.py", "pretrain.py", "spec.py", "build.py")


@dataclass(frozen=True)
class WorldArtifacts:
    """Where a built world lives: pass the paths to any ``from_pretrained``."""

    vision_path: Path
    lm_path: Path
    spec: WorldSpec
    built: bool  # True when this call trained the models, False when it found them cached or shipped
    shipped: bool = False  # True when they are the copy shipped in the package (fedalign.world.shipped)


def world_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$FEDALIGN_CACHE``, else ``~/.cache/fedalign``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("FEDALIGN_CACHE") or Path.home() / ".cache" / "fedalign")


def code_version() -> str:
    """Hash of the sources that determine the built models (any edit invalidates the cache)."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _key(spec: WorldSpec) -> str:
    return hashlib.sha256((spec.to_json() + code_version()).encode()).hexdigest()[:20]


def _scenes(spec: WorldSpec):
    rng = np.random.default_rng(spec.seed)
    return [sample_scene(rng, counts=spec.counts) for _ in range(spec.n_pretrain_scenes)]


def _single_thread(fn):
    """Run ``fn()`` on one torch thread with the global RNG forked (same floats whatever the
    caller's thread count, and the caller's RNG state untouched)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return fn()
    finally:
        torch.set_num_threads(threads)


def _save_quietly(model, path: Path) -> None:
    """``save_pretrained`` without transformers' progress bar (a build's output is ours to print)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _vision_part(spec_json: str, out: str) -> dict[str, float]:
    """Pretrain and save the ViT (and its processor) under ``out/vision``; its figures."""
    spec = WorldSpec.from_json(spec_json)
    scenes = _scenes(spec)
    images = np.stack([render(s) for s in scenes])

    def train():
        torch.manual_seed(spec.seed)
        t0 = time.perf_counter()
        vision, stats = pretrain_vision(spec, scenes, images, torch.Generator().manual_seed(spec.seed))
        return vision, {"vision_seconds": time.perf_counter() - t0, **stats}

    vision, stats = _single_thread(train)
    _save_quietly(vision, Path(out) / "vision")
    image_processor().save_pretrained(Path(out) / "vision")
    return stats


def _lm_part(spec_json: str, out: str) -> dict[str, float]:
    """Pretrain and save the LM and its tokenizer under ``out/lm``; its figures."""
    spec = WorldSpec.from_json(spec_json)
    scenes = _scenes(spec)
    tokenizer = build_tokenizer()

    def train():
        torch.manual_seed(spec.seed + 1)
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(spec.seed + 1)
        lm, stats = pretrain_lm(spec, scenes, tokenizer, gen, np.random.default_rng(spec.seed + 1))
        return lm, {"lm_seconds": time.perf_counter() - t0, **stats}

    lm, stats = _single_thread(train)
    _save_quietly(lm, Path(out) / "lm")
    tokenizer.save_pretrained(Path(out) / "lm")
    return stats


def default_build_jobs(spec: WorldSpec) -> int:
    """2 processes (ViT and LM side by side) where there are 2 cores and the spec is not a
    toy; a spawned process costs seconds of imports, more than a toy world's whole build."""
    work = spec.vision_steps * spec.vision_batch + spec.lm_steps * spec.lm_batch
    return 2 if (os.cpu_count() or 1) >= 2 and work >= 20_000 else 1


def _train(spec: WorldSpec, out: Path, jobs: int) -> None:
    spec_json, where = spec.to_json(), str(out)
    t0 = time.perf_counter()
    if jobs >= 2:  # the two models do not depend on each other: the ViT in a child process
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=apply_process_defaults) as pool:
            vision = pool.submit(_vision_part, spec_json, where)
            stats = _lm_part(spec_json, where)
            stats.update(vision.result())
    else:
        stats = _vision_part(spec_json, where)
        stats.update(_lm_part(spec_json, where))
    stats["build_wall_seconds"] = time.perf_counter() - t0
    stats["build_jobs"] = jobs
    (out / "build.json").write_text(json.dumps({"code_version": code_version(), **stats}, indent=1))
    (out / "spec.json").write_text(spec.to_json())


def build_world(
    spec: WorldSpec | None = None, cache_dir: str | os.PathLike | None = None, *, jobs: int | None = None,
    use_shipped: bool = True,
) -> WorldArtifacts:
    """The world's frozen models for ``spec``: from the cache, else the copy shipped in the package
    for this spec and code (the default spec; ``use_shipped=False`` ignores it), else trained and cached.

    Deterministic: the same spec and code give the same weights, built in one process or
    in two (``jobs``, default :func:`default_build_jobs`). Concurrent builders are safe;
    the first rename wins and the others discard their copy.
    """
    spec = spec if spec is not None else WorldSpec()
    root = world_cache_root(cache_dir)
    key = _key(spec)
    final = root / f"world-{key}"
    built = False
    if not (final / "spec.json").is_file() and use_shipped:
        from .shipped import shipped_world

        ours = shipped_world(key)
        if ours is not None:
            return WorldArtifacts(ours / "vision", ours / "lm", spec, False, shipped=True)
    if not (final / "spec.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            _train(spec, tmp, default_build_jobs(spec) if jobs is None else jobs)
            try:
                os.rename(tmp, final)
                built = True
            except OSError:
                if not (final / "spec.json").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return WorldArtifacts(final / "vision", final / "lm", spec, built)


def load_world(artifacts: WorldArtifacts):
    """``(vision, image_processor, lm, tokenizer)`` through the Auto classes, frozen, eval mode."""
    from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        vision = AutoModel.from_pretrained(artifacts.vision_path)
        processor = AutoImageProcessor.from_pretrained(artifacts.vision_path)
        lm = AutoModelForCausalLM.from_pretrained(artifacts.lm_path)
        tokenizer = AutoTokenizer.from_pretrained(artifacts.lm_path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the embedded world from {artifacts.vision_path.parent}: {exc}") from exc
    for model in (vision, lm):
        model.requires_grad_(False)
        model.eval()
    return vision, processor, lm, tokenizer
