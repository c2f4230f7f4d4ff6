"""Where a silo's data and frozen models come from: files named in silo.toml, or the embedded world.

``load_inputs(cfg)`` returns the training records, the held-out captions, the probe items and
the LM's text-only prompt form; ``model_paths(cfg)`` turns ``"embedded"`` into the world's
saved model folders (built and cached on first use), so both paths load through
``from_pretrained`` alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from fedalign.protocol.config.silo import EMBEDDED, SiloConfig
from fedalign.protocol.errors import ConfigError
from fedalign.silo.data import Sample, read_eval_items, read_records
from fedalign.silo.evaluate import remove_image

__all__ = ["SiloInputs", "load_inputs", "model_paths", "world_spec"]

WORLD_BUILD_TICK_S = 15.0  # a progress line this often while the embedded world's models are built


@dataclass
class SiloInputs:
    train: list[Sample]
    heldout: list[Sample]
    items: list[Any]
    text_only_prompt: Callable[[str], str] = remove_image
    report: dict[str, Any] = field(default_factory=dict)


def world_spec(cfg: SiloConfig):
    from fedalign.world import TINY_SPEC, WorldSpec

    return TINY_SPEC if cfg.data.world.spec == "tiny" else WorldSpec()


def model_paths(cfg: SiloConfig, *, notify: Callable[[str], None] | None = None) -> tuple[str, str]:
    """(vision tower, LLM) ids or paths; ``embedded`` builds or finds the world's models.

    ``notify`` gets progress lines: where the cache is, and every ``WORLD_BUILD_TICK_S`` while a
    first build runs."""
    m = cfg.model
    if EMBEDDED not in (m.vision_tower, m.llm):
        return _local(cfg, m.vision_tower, "model.vision_tower"), _local(cfg, m.llm, "model.llm")
    import threading
    import time

    from fedalign.world import build_world, world_cache_root

    w = cfg.data.world
    say = notify or (lambda line: None)
    root = world_cache_root(cfg.resolve(w.cache_dir))
    built = (f"built once in {root}, about 2-3 minutes on 2 cores; FEDALIGN_CACHE or data.world.cache_dir moves "
             "it")
    say(f"embedded world ({w.spec} spec): " + ("its frozen models ship with the package (a copy that does not match "
                                               f"this code is {built})" if w.spec == "default"
                                               else f"loading its frozen models, {built}"))
    done = threading.Event()
    t0 = time.monotonic()

    def tick() -> None:
        while not done.wait(WORLD_BUILD_TICK_S):
            say(f"  still building the embedded world's models ({time.monotonic() - t0:.0f}s so far) ...")

    ticker = threading.Thread(target=tick, daemon=True, name="world-build-progress")
    ticker.start()
    try:
        art = build_world(world_spec(cfg), cfg.resolve(w.cache_dir))
    finally:
        done.set()
    if art.built:
        say(f"  built and cached in {time.monotonic() - t0:.0f}s: {art.vision_path.parent}")
    return (str(art.vision_path) if m.vision_tower == EMBEDDED else _local(cfg, m.vision_tower, "model.vision_tower"),
            str(art.lm_path) if m.llm == EMBEDDED else _local(cfg, m.llm, "model.llm"))


def _local(cfg: SiloConfig, name: str, field_name: str = "model") -> str:
    """A relative path that exists next to the config wins over a hub id of the same spelling;
    a name that can only be a path must exist (ModelLoadError names the field and the path)."""
    from pathlib import Path

    from fedalign.protocol.errors import ModelLoadError
    from fedalign.silo.model import looks_like_path

    p = cfg.resolve(Path(name).expanduser())
    if p is not None and p.exists():
        return str(p)
    if looks_like_path(name):
        raise ModelLoadError(f"{field_name}: path {p} not found (a local model folder with config.json; "
                             "a hub id is written as org/name)")
    return name


def _world_inputs(cfg: SiloConfig) -> SiloInputs:
    from fedalign.world import make_eval_items, make_scenario, text_only_prompt

    w = cfg.data.world
    opts = dict(w.options)
    if w.scenario != "unreliable":  # the builder validates these even when the scenario ignores them
        opts.setdefault("n_unreliable", 0)
        opts.setdefault("min_samples", 1)
    try:
        sc = make_scenario(w.scenario, w.n_silos, w.seed, samples_per_silo=w.samples_per_silo,
                           test_size=w.test_size, alpha=w.alpha, **opts)
    except TypeError as exc:  # an unknown key in options
        raise ConfigError(f"data.world.options: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"data.world: {exc}") from None
    silos = range(w.n_silos) if w.silo_index is None else [w.silo_index]
    if w.public:  # the coordinator's public set: clean draws from a stream no silo and no test split uses
        import numpy as np

        from fedalign.world.scenarios import make_samples

        counts = tuple(opts.get("counts", (1, 2, 3)))
        train = world_records(make_samples(w.samples_per_silo, np.random.default_rng([w.seed, 997]), counts=counts),
                              "world:public")
    else:
        train = [r for k in silos for r in world_records(sc.silos[k], f"world:{w.scenario}:silo{k}")]
    heldout = world_records(sc.test, "world:test")
    items = make_eval_items(sc.test[: w.probe_samples], w.seed) if w.probe_samples else []
    report = {"source": "world", "scenario": w.scenario, "n_silos": w.n_silos, "silo_index": w.silo_index, "public": w.public,
              "unreliable_silos": list(sc.unreliable), "kept": len(train), "skipped": 0}
    # the world's LM was pretrained on placeholder prefixes: its fair no-image form; others drop the marker
    text_only = text_only_prompt if cfg.model.llm == EMBEDDED else remove_image
    return SiloInputs(train, heldout, items, text_only, report)


def _file_inputs(cfg: SiloConfig) -> SiloInputs:
    d = cfg.data
    root = cfg.resolve(d.image_root)
    train, rep = read_records(cfg.resolve(d.train), image_root=root, fmt=d.format, policy=d.bad_records)
    heldout: list[Sample] = []
    if d.eval is not None:
        heldout, _ = read_records(cfg.resolve(d.eval), image_root=root, fmt=d.format, policy=d.bad_records)
    items = read_eval_items(cfg.resolve(d.eval_items), image_root=root) if d.eval_items else []
    return SiloInputs(train, heldout, items, remove_image, {"source": "files", **rep.as_dict()})


def world_records(samples, source: str) -> list[Sample]:
    """The embedded world's samples as this silo's data records (``source:i`` names each one)."""
    from fedalign.world import CAPTION_PROMPT

    return [Sample(s.image, CAPTION_PROMPT, s.caption, f"{source}:{i}") for i, s in enumerate(samples)]


def load_inputs(cfg: SiloConfig) -> SiloInputs:
    """Read (files) or generate (world) everything this silo trains and evaluates on."""
    if cfg.data.source == "world":
        return _world_inputs(cfg)
    if cfg.data.source == "files":
        return _file_inputs(cfg)
    raise ConfigError(f"data.source must be 'world' or 'files', got {cfg.data.source!r}")
