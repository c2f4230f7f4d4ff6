"""The embedded world: a procedural image-caption world and tiny frozen models pretrained on
it, so the whole toolkit runs offline and measurably (docs/design.md §8).

Typical use::

    art = build_world(WorldSpec(seed=0))          # cached after the first call
    model = load_alignment_model(str(art.vision_path), str(art.lm_path))
    sc = make_scenario("label_skew", n_silos=5, seed=0, alpha=0.1)
    items = make_eval_items(sc.test, seed=0)
"""

from .build import WorldArtifacts, build_world, code_version, load_world, world_cache_root
from .export import IMAGE_DIR, WorldDataset, write_eval_items, write_images, write_jsonl, write_llava_json
from .probes import ITEM_KINDS, EvalItem, Question, make_eval_items
from .scenarios import SCENARIOS, Sample, Scenario, make_samples, make_scenario, skew_report
from .scene import COLOURS, DOMAINS, POSITIONS, SHAPES, SIZES, Scene, SceneObject, render, sample_scene
from .spec import TINY_SPEC, WorldSpec
from .text import (
    CAPTION_PROMPT,
    CAPTION_STYLES,
    COLOUR_PROMPT,
    COUNT_PROMPT,
    IMAGE_TOKEN,
    N_IMAGE_TOKENS,
    PLACEHOLDER_TOKEN,
    PRESENCE_PROMPT,
    SHAPE_PROMPT,
    caption,
    scene_prefix,
    text_only_prompt,
)

__all__ = [
    "WorldSpec",
    "TINY_SPEC",
    "WorldArtifacts",
    "build_world",
    "load_world",
    "world_cache_root",
    "code_version",
    "Scene",
    "SceneObject",
    "sample_scene",
    "render",
    "SHAPES",
    "COLOURS",
    "SIZES",
    "POSITIONS",
    "DOMAINS",
    "CAPTION_STYLES",
    "caption",
    "scene_prefix",
    "text_only_prompt",
    "IMAGE_TOKEN",
    "PLACEHOLDER_TOKEN",
    "N_IMAGE_TOKENS",
    "CAPTION_PROMPT",
    "PRESENCE_PROMPT",
    "COLOUR_PROMPT",
    "SHAPE_PROMPT",
    "COUNT_PROMPT",
    "EvalItem",
    "Question",
    "ITEM_KINDS",
    "make_eval_items",
    "SCENARIOS",
    "Sample",
    "Scenario",
    "make_samples",
    "make_scenario",
    "skew_report",
    "IMAGE_DIR",
    "write_images",
    "write_jsonl",
    "write_llava_json",
    "write_eval_items",
    "WorldDataset",
]
