"""Scenes of the embedded world as data, and their rendering to 32x32 RGB images.

A scene is a 2x2 grid of quadrants, each empty or holding one object (shape, colour, size),
drawn on a background whose visual style (the "domain") varies. Scenes are plain frozen
dataclasses so captions, probes and scenario splits can ask what is in an image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "SHAPES",
    "COLOURS",
    "SIZES",
    "POSITIONS",
    "DOMAINS",
    "IMAGE_SIZE",
    "SceneObject",
    "Scene",
    "sample_scene",
    "render",
    "with_object",
]

IMAGE_SIZE = 32
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES: tuple[str, ...] = ("small", "large")
# Quadrants in reading order; each is two words of the caption vocabulary.
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
# Visual styles ("domains"): background texture, noise and contrast.
DOMAINS: tuple[str, ...] = ("plain", "noisy", "striped", "shaded", "checkered")

_RGB = {
    "red": (225, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (230, 220, 40),
    "purple": (165, 55, 205),
    "cyan": (45, 215, 225),
}
_RADIUS = {"small": 3.6, "large": 6.6}
_HALF = IMAGE_SIZE // 2


@dataclass(frozen=True)
class SceneObject:
    """One object: its shape, colour, size and quadrant (an index into POSITIONS)."""

    shape: str
    colour: str
    size: str
    position: int


@dataclass(frozen=True)
class Scene:
    """A whole image as data: objects in reading order, the domain, and a render seed.

    ``render_seed`` fixes the pixel noise and jitter, so ``render(scene)`` is a pure
    function of the scene.
    """

    objects: tuple[SceneObject, ...]
    domain: str
    render_seed: int

    @property
    def count(self) -> int:
        return len(self.objects)

    def at(self, position: int) -> SceneObject | None:
        for obj in self.objects:
            if obj.position == position:
                return obj
        return None

    def has(self, *, shape: str | None = None, colour: str | None = None) -> bool:
        return any(
            (shape is None or o.shape == shape) and (colour is None or o.colour == colour)
            for o in self.objects
        )


def sample_scene(
    generator: np.random.Generator,
    *,
    shape_probs: np.ndarray | None = None,
    colour_probs: np.ndarray | None = None,
    domain_probs: np.ndarray | None = None,
    counts: tuple[int, ...] = (1, 2, 3),
    shapes: tuple[str, ...] = SHAPES,
    colours: tuple[str, ...] = COLOURS,
    domains: tuple[str, ...] = DOMAINS,
) -> Scene:
    """Draw one scene; ``*_probs`` (default uniform) skew the attribute distributions."""
    n = int(generator.choice(np.asarray(counts)))
    quads = np.sort(generator.choice(len(POSITIONS), size=n, replace=False))
    objs = []
    for q in quads:
        objs.append(
            SceneObject(
                shape=shapes[generator.choice(len(shapes), p=shape_probs)],
                colour=colours[generator.choice(len(colours), p=colour_probs)],
                size=SIZES[generator.integers(len(SIZES))],
                position=int(q),
            )
        )
    domain = domains[generator.choice(len(domains), p=domain_probs)]
    return Scene(tuple(objs), domain, int(generator.integers(2**31 - 1)))


def with_object(scene: Scene, index: int, **changes: object) -> Scene:
    """The same scene with object ``index`` changed (objects stay in reading order)."""
    objs = list(scene.objects)
    objs[index] = replace(objs[index], **changes)
    objs.sort(key=lambda o: o.position)
    return replace(scene, objects=tuple(objs))


def _background(domain: str, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    if domain == "plain":
        base = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 35.0, np.float32) + rng.normal(0, 3, 3)
    elif domain == "noisy":
        base = 75.0 + rng.normal(0, 28, (IMAGE_SIZE, IMAGE_SIZE, 3))
    elif domain == "striped":
        period = rng.integers(5, 8)
        phase = rng.integers(period)
        stripe = ((xx + yy + phase) // (period / 2)) % 2
        lo, hi = rng.uniform(20, 40), rng.uniform(95, 125)
        base = np.repeat((lo + (hi - lo) * stripe)[..., None], 3, axis=2)
    elif domain == "shaded":
        direction = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(direction) * xx + np.sin(direction) * yy) / IMAGE_SIZE
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        tint = rng.uniform(0.7, 1.0, 3)
        base = (15 + 150 * ramp)[..., None] * tint
    elif domain == "checkered":
        cell = rng.integers(3, 6)
        check = ((xx // cell) + (yy // cell)) % 2
        base = np.repeat((30 + 55 * check)[..., None], 3, axis=2)
    else:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return base.astype(np.float32)


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.82 * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape == "triangle":
        return (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) * 0.55)
    if shape == "cross":
        t = max(r / 3.2, 1.0)
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(scene: Scene) -> np.ndarray:
    """Render ``scene`` to a ``(32, 32, 3)`` uint8 array; deterministic given the scene."""
    rng = np.random.default_rng(scene.render_seed)
    img = _background(scene.domain, rng)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    for obj in scene.objects:
        r = _RADIUS[obj.size]
        slack = (_HALF - 2 * r - 1) / 2
        qy, qx = divmod(obj.position, 2)
        cy = qy * _HALF + _HALF / 2 - 0.5 + rng.uniform(-slack, slack)
        cx = qx * _HALF + _HALF / 2 - 0.5 + rng.uniform(-slack, slack)
        m = _mask(obj.shape, xx - cx, yy - cy, r)
        colour = np.asarray(_RGB[obj.colour], np.float32) + rng.normal(0, 12, 3)
        img[m] = colour
    if scene.domain == "noisy":
        img += rng.normal(0, 14, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
