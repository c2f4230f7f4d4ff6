"""The world's samples in the project's two file formats, and as an in-memory Dataset.

Writing PNG files plus a JSONL (``image``, ``caption``) or a LLaVA stage-1 JSON lets the real
data path read the embedded world; ``WorldDataset`` skips the files for fast simulation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from fedalign.host.atomic import atomic_write_text

from .text import CAPTION_PROMPT

__all__ = [
    "IMAGE_DIR",
    "write_images",
    "write_jsonl",
    "write_llava_json",
    "write_eval_items",
    "WorldDataset",
]

IMAGE_DIR = "images"


def write_images(samples: Sequence, out_dir: str | os.PathLike) -> list[str]:
    """PNG files ``images/000000.png``...; returns their paths relative to ``out_dir``."""
    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    names = []
    for i, s in enumerate(samples):
        name = f"{IMAGE_DIR}/{i:06d}.png"
        Image.fromarray(np.asarray(s.image, dtype=np.uint8)).save(out / name)
        names.append(name)
    return names


def write_jsonl(samples: Sequence, out_dir: str | os.PathLike, name: str = "data.jsonl") -> Path:
    """PNG files and a JSONL index of ``{"image", "caption"}`` lines; image root = ``out_dir``."""
    names = write_images(samples, out_dir)
    lines = [json.dumps({"image": n, "caption": s.caption}) + "\n" for n, s in zip(names, samples)]
    return atomic_write_text(Path(out_dir) / name, "".join(lines))


def write_llava_json(samples: Sequence, out_dir: str | os.PathLike, name: str = "data.json") -> Path:
    """PNG files and a LLaVA stage-1 JSON list (human turn ``<image>``, gpt turn the caption)."""
    names = write_images(samples, out_dir)
    rows = [
        {
            "id": f"{i:06d}",
            "image": n,
            "conversations": [
                {"from": "human", "value": CAPTION_PROMPT},
                {"from": "gpt", "value": s.caption},
            ],
        }
        for i, (n, s) in enumerate(zip(names, samples))
    ]
    return atomic_write_text(Path(out_dir) / name, json.dumps(rows, indent=1))


def write_eval_items(items: Sequence, out_dir: str | os.PathLike, name: str = "eval.jsonl") -> Path:
    """PNG files and a JSONL of ``{"image", "prompt", "candidates", "answer", "kind"}``,
    the probe file format ``silo.data.read_eval_items`` reads."""
    out = Path(out_dir)
    (out / "eval_images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, it in enumerate(items):
        image = f"eval_images/{i:06d}.png"
        Image.fromarray(np.asarray(it.image, dtype=np.uint8)).save(out / image)
        row = {"image": image, "prompt": it.prompt, "candidates": list(it.candidates), "answer": it.answer,
               "kind": it.kind}
        lines.append(json.dumps(row) + "\n")
    return atomic_write_text(out / name, "".join(lines))


class WorldDataset(torch.utils.data.Dataset):
    """Samples in memory: item ``i`` is ``{"image": PIL.Image, "prompt", "caption"}``.

    Images are PIL, as the project's file loaders return them, so the same processor and
    model code runs on both.
    """

    def __init__(self, samples: Sequence) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        return {"image": Image.fromarray(np.asarray(s.image, dtype=np.uint8)), "prompt": CAPTION_PROMPT, "caption": s.caption}
