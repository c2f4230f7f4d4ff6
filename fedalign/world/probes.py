"""Evaluation items scored by the frozen LM's likelihood: 4-way multiple-choice captions,
balanced yes/no object-presence probes and attribute probes (colour, shape, count).

An item is generic (image, prompt containing ``<image>``, candidate completions, index of
the right one), so the trainer's evaluator needs no knowledge of this world. The same
question builders feed the LM's pretraining, so the LM knows the Q/A formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scene import COLOURS, POSITIONS, SHAPES, SIZES, Scene, render, with_object
from .text import (
    CAPTION_PROMPT,
    COLOUR_PROMPT,
    COUNT_PROMPT,
    COUNT_WORDS,
    NO,
    NONE_WORD,
    PRESENCE_PROMPT,
    SHAPE_PROMPT,
    YES,
    caption,
)

__all__ = [
    "EvalItem",
    "Question",
    "ITEM_KINDS",
    "caption_choices",
    "presence_question",
    "attribute_question",
    "make_eval_items",
]

ITEM_KINDS = ("caption_mc", "presence", "colour", "shape", "count")
# Share of absent-object probes that are near misses (the shape or the colour is present).
# At 0.7 the 2-layer LM answered presence at chance even given the true prefix.
NEAR_MISS_SHARE = 0.3


@dataclass(frozen=True)
class Question:
    """A prompt (with ``<image>``), candidate completions and the index of the right one."""

    kind: str
    prompt: str
    candidates: tuple[str, ...]
    answer: int

    @property
    def target(self) -> str:
        return self.candidates[self.answer]


@dataclass(frozen=True)
class EvalItem:
    """A question about one image; ``scene`` says what the image shows."""

    kind: str
    image: np.ndarray
    prompt: str
    candidates: tuple[str, ...]
    answer: int
    scene: Scene


def _mutate(scene: Scene, rng: np.random.Generator) -> Scene:
    """Change one attribute of one object (shape, colour, size, or move it to an empty quadrant)."""
    i = int(rng.integers(scene.count))
    obj = scene.objects[i]
    free = [p for p in range(len(POSITIONS)) if scene.at(p) is None]
    kinds = ["shape", "colour", "size"] + (["position"] if free else [])
    kind = kinds[rng.integers(len(kinds))]
    if kind == "shape":
        return with_object(scene, i, shape=str(rng.choice([s for s in SHAPES if s != obj.shape])))
    if kind == "colour":
        return with_object(scene, i, colour=str(rng.choice([c for c in COLOURS if c != obj.colour])))
    if kind == "size":
        return with_object(scene, i, size=[s for s in SIZES if s != obj.size][0])
    return with_object(scene, i, position=int(rng.choice(free)))


def caption_choices(
    scene: Scene, style: str, rng: np.random.Generator, n_choices: int = 4
) -> Question:
    """The true caption among ``n_choices - 1`` distractors that differ in attributes the
    style mentions (each distractor a distinct, different caption of the same length)."""
    truth = caption(scene, style)
    seen = {truth}
    distractors: list[str] = []
    for _ in range(200):
        cand = caption(_mutate(scene, rng), style)
        if cand not in seen and len(cand.split()) == len(truth.split()):
            seen.add(cand)
            distractors.append(cand)
            if len(distractors) == n_choices - 1:
                break
    else:
        raise ValueError(f"could not find {n_choices - 1} distractors for {truth!r}")
    answer = int(rng.integers(n_choices))
    options = distractors[:answer] + [truth] + distractors[answer:]
    return Question("caption_mc", CAPTION_PROMPT, tuple(options), answer)


def presence_question(scene: Scene, rng: np.random.Generator, positive: bool) -> Question:
    """"Is there a {colour} {shape}?" with a true object, or a near miss that is absent
    (same shape in another colour, or same colour on another shape) NEAR_MISS_SHARE of the
    time, else any absent pair."""
    if positive:
        obj = scene.objects[rng.integers(scene.count)]
        colour, shape = obj.colour, obj.shape
    else:
        pairs = [(c, s) for c in COLOURS for s in SHAPES if not scene.has(shape=s, colour=c)]
        near = [(c, s) for c, s in pairs if scene.has(shape=s) or scene.has(colour=c)]
        pool = near if near and rng.random() < NEAR_MISS_SHARE else pairs
        colour, shape = pool[rng.integers(len(pool))]
    prompt = PRESENCE_PROMPT.format(colour=colour, shape=shape)
    return Question("presence", prompt, (YES, NO), 0 if positive else 1)


def attribute_question(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> Question:
    """Colour of a shape (unique in the scene), shape at a position, or the object count."""
    unique = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    kinds = ["shape", "count"] + (["colour"] if unique else [])
    kind = kind if kind is not None else kinds[rng.integers(len(kinds))]
    if kind == "colour":
        if not unique:
            raise ValueError("no shape is unique in this scene; cannot ask for its colour")
        obj = unique[rng.integers(len(unique))]
        return Question(kind, COLOUR_PROMPT.format(shape=obj.shape), COLOURS, COLOURS.index(obj.colour))
    if kind == "shape":
        pos = int(rng.integers(len(POSITIONS)))
        if scene.at(pos) is None and rng.random() < 0.6:  # ask mostly about occupied quadrants
            pos = scene.objects[rng.integers(scene.count)].position
        obj = scene.at(pos)
        options = (*SHAPES, NONE_WORD)
        right = options.index(obj.shape) if obj is not None else len(SHAPES)
        return Question(kind, SHAPE_PROMPT.format(position=POSITIONS[pos]), options, right)
    if kind == "count":
        options = COUNT_WORDS[1:]
        return Question(kind, COUNT_PROMPT, options, options.index(COUNT_WORDS[scene.count]))
    raise ValueError(f"unknown attribute question kind {kind!r}")


def make_eval_items(
    samples: list,
    seed: int,
    *,
    kinds: tuple[str, ...] = ("caption_mc", "presence", "colour", "shape", "count"),
    n_choices: int = 4,
) -> list[EvalItem]:
    """Items over ``samples`` (objects with ``scene`` and ``style``): per sample one of each
    kind in ``kinds``; presence probes alternate yes/no so they are balanced exactly."""
    for k in kinds:
        if k not in ITEM_KINDS:
            raise ValueError(f"unknown item kind {k!r}; expected some of {ITEM_KINDS}")
    rng = np.random.default_rng(seed)
    items: list[EvalItem] = []
    for i, sample in enumerate(samples):
        scene = sample.scene
        image = sample.image if getattr(sample, "image", None) is not None else render(scene)
        for kind in kinds:
            if kind == "caption_mc":
                q = caption_choices(scene, sample.style, rng, n_choices)
            elif kind == "presence":
                q = presence_question(scene, rng, positive=i % 2 == 0)
            elif kind == "colour" and not any(
                sum(p.shape == o.shape for p in scene.objects) == 1 for o in scene.objects
            ):
                continue
            else:
                q = attribute_question(scene, rng, kind)
            items.append(EvalItem(q.kind, image, q.prompt, q.candidates, q.answer, scene))
    return items
