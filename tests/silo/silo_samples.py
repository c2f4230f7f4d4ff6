"""The silo tests' tiny procedural image-caption set (coloured shapes) and its word-level tokenizer.

A plain module (not the conftest) so test files import it by name, whatever is on sys.path: the
suite also runs against an installed wheel, outside the checkout.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "bar", "dot")
WORDS = ["a", "an", "image", "of", "big", "small", "is", "there", "yes", "no", "describe", ":",
         *COLOURS, *SHAPES]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def make_image(colour: str, shape: str, size: str, rng: np.random.Generator) -> Image.Image:
    a = np.full((32, 32, 3), 128, np.uint8) + rng.integers(0, 20, (32, 32, 3), dtype=np.uint8)
    s = 14 if size == "big" else 7
    y, x = rng.integers(0, 32 - s, 2)
    h, w = {"square": (s, s), "bar": (max(2, s // 3), s), "dot": (max(2, s // 2), max(2, s // 2))}[shape]
    a[y : y + h, x : x + w] = COLOURS[colour]
    return Image.fromarray(a)


def make_samples(n: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = list(COLOURS)[rng.integers(len(COLOURS))]
        s = SHAPES[rng.integers(len(SHAPES))]
        z = ("big", "small")[rng.integers(2)]
        out.append((make_image(c, s, z, rng), f"a {z} {c} {s}"))
    return out
