"""The embedded world's language: captions in several styles, the symbolic scene prefix,
probe questions, prompt templates and the closed word vocabulary they all draw from.

The symbolic prefix has one token per ViT patch (4x4 patches, 16 tokens, row-major): patch
row q describes quadrant q (reading order) as ``size colour shape X``, X being the object's
ordinal in reading order ("one", "two", ...) or, for an empty quadrant, ``none none none``
and the background word. The LM is pretrained to read it where image tokens will later
stand and the ViT to predict it per patch, so aligning means mapping each patch's features
onto the word it stands for. Quadrant-contiguous rows and the ordinal let a 2-layer LM find
"the k-th object" of a caption (measured: far better than a spatial per-patch layout).
"""

from __future__ import annotations

from .scene import COLOURS, DOMAINS, POSITIONS, SHAPES, SIZES, Scene

__all__ = [
    "IMAGE_TOKEN",
    "PLACEHOLDER_TOKEN",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "UNK_TOKEN",
    "SPECIAL_TOKENS",
    "N_IMAGE_TOKENS",
    "CAPTION_STYLES",
    "CAPTION_PROMPT",
    "PRESENCE_PROMPT",
    "COLOUR_PROMPT",
    "SHAPE_PROMPT",
    "COUNT_PROMPT",
    "YES",
    "NO",
    "NONE_WORD",
    "BACKGROUND_WORDS",
    "COUNT_WORDS",
    "PREFIX_WORDS",
    "caption",
    "scene_prefix",
    "text_only_prompt",
    "vocabulary",
]

IMAGE_TOKEN = "<image>"
PLACEHOLDER_TOKEN = "<ph>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN, PLACEHOLDER_TOKEN)
N_IMAGE_TOKENS = 16  # 32x32 image, patch 8: the ViT's patch tokens (CLS dropped)

# Prompt templates, shared with the trainer's evaluator: a prompt holds IMAGE_TOKEN once,
# the completion (caption or answer) follows it after one space.
CAPTION_PROMPT = IMAGE_TOKEN
PRESENCE_PROMPT = IMAGE_TOKEN + " question : is there a {colour} {shape} ? answer :"
COLOUR_PROMPT = IMAGE_TOKEN + " question : what colour is the {shape} ? answer :"
SHAPE_PROMPT = IMAGE_TOKEN + " question : what shape is at the {position} ? answer :"
COUNT_PROMPT = IMAGE_TOKEN + " question : how many shapes are there ? answer :"
YES, NO = "yes", "no"

NONE_WORD = "none"
BACKGROUND_WORDS = {
    "plain": "plain",
    "noisy": "noisy",
    "striped": "striped",
    "shaded": "shaded",
    "checkered": "checkered",
}
COUNT_WORDS = ("zero", "one", "two", "three", "four")
# Caption styles differ in word order and in which attributes they mention, so that a
# silo seeing one style only learns part of the visual content (caption-style skew).
CAPTION_STYLES: tuple[str, ...] = ("verbose", "terse", "spatial", "sized")
PREFIX_WORDS: tuple[str, ...] = (
    NONE_WORD, *SIZES, *COLOURS, *SHAPES, *BACKGROUND_WORDS.values(), *COUNT_WORDS[1:4]
)


def scene_prefix(scene: Scene) -> list[str]:
    """The 16 symbolic prefix words of ``scene`` in ViT patch order (row-major 4x4)."""
    bg = BACKGROUND_WORDS[scene.domain]
    words: list[str] = []
    k = 0
    for q in range(4):
        obj = scene.at(q)
        if obj is None:
            words += [NONE_WORD, NONE_WORD, NONE_WORD, bg]
        else:
            k += 1
            words += [obj.size, obj.colour, obj.shape, COUNT_WORDS[k]]
    return words


def caption(scene: Scene, style: str) -> str:
    """The caption of ``scene`` in ``style`` (one of CAPTION_STYLES); words space-separated."""
    objs = scene.objects
    if style == "verbose":
        n = len(objs)
        head = f"there {'is' if n == 1 else 'are'} {COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'}"
        head += f" on a {BACKGROUND_WORDS[scene.domain]} background ."
        parts = [f"a {o.size} {o.colour} {o.shape} at the {POSITIONS[o.position]} ." for o in objs]
        return " ".join([head, *parts])
    if style == "terse":
        return " , ".join(f"{o.colour} {o.shape}" for o in objs)
    if style == "spatial":
        return " ; ".join(f"{POSITIONS[o.position]} : {o.shape}" for o in objs)
    if style == "sized":
        return " and ".join(f"{o.size} {o.shape}" for o in objs) + " ."
    raise ValueError(f"unknown caption style {style!r}; expected one of {CAPTION_STYLES}")


def text_only_prompt(prompt: str, *, placeholders: bool = True) -> str:
    """``prompt`` with the image replaced by placeholder tokens (or removed): the same LM
    without an image, the fair text-only baseline (it was pretrained on both forms)."""
    filler = " ".join([PLACEHOLDER_TOKEN] * N_IMAGE_TOKENS) if placeholders else ""
    return prompt.replace(IMAGE_TOKEN, filler).strip()


def vocabulary() -> list[str]:
    """Every token of the world's language, special tokens first, in a fixed order."""
    words: list[str] = list(SPECIAL_TOKENS)
    fixed = [
        *PREFIX_WORDS,
        *COUNT_WORDS,
        *(w for p in POSITIONS for w in p.split()),
        "there", "is", "are", "shape", "shapes", "on", "a", "background", "at", "the", "and",
        ".", ",", ";", ":", "?", "question", "answer", "what", "colour", "how", "many",
        YES, NO,
    ]  # fmt: skip
    for w in fixed:
        if w not in words:
            words.append(w)
    return words
