"""Image-caption data for stage-1 alignment: reading, validating, and one-pass sharding.

Two file formats: LLaVA stage-1 JSON (a list of ``{"image", "conversations"}`` whose human
turn contains ``<image>`` and whose gpt turn is the caption) and JSONL (``{"image",
"caption"}``, optional ``"prompt"``). A bad record raises :class:`DataError` naming file and
line (policy ``fail``) or is skipped and counted (policy ``skip``).

One pass: :class:`ShardCursor` persists a shuffled order and a cursor (atomic JSON), and
advances the cursor *before* handing a shard out, so a restart never re-reads used samples.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from fedalign.protocol.errors import DataError
from fedalign.host.atomic import atomic_write_json
from fedalign.silo.model import IMAGE_TOKEN

__all__ = [
    "IMAGE_TOKEN",
    "DEFAULT_PROMPT",
    "Sample",
    "DataReport",
    "read_records",
    "open_image",
    "check_image",
    "Shard",
    "ShardCursor",
    "fingerprint",
    "ProbeItem",
    "read_eval_items",
]

DEFAULT_PROMPT = IMAGE_TOKEN + "\n"  # LLaVA's stage-1 "plain" template: image, newline, caption

Policy = Literal["skip", "fail"]


@dataclass(frozen=True)
class Sample:
    """One training record; ``image`` is a path (files) or a PIL image (in-memory sources)."""

    image: Any
    prompt: str
    caption: str
    origin: str = ""  # "file:line" of the record, for error messages


@dataclass
class DataReport:
    """What reading a file found: records kept, records skipped, the first problems."""

    path: str
    kept: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kept": self.kept, "skipped": self.skipped, "problems": self.problems[:20]}


def open_image(image: Any, origin: str = "") -> Image.Image:
    """Decode to RGB; DataError naming ``origin`` when the file is missing or undecodable."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{origin}: image file not found: {image}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{origin}: cannot decode image {image}: {exc}") from None


def check_image(path: Path, origin: str) -> None:
    """The image file exists and decodes (DataError naming ``origin`` otherwise)."""
    if not path.is_file():
        raise DataError(f"{origin}: image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{origin}: cannot decode image {path}: {exc}") from None


def read_records(path: str | Path, *, image_root: str | Path | None = None, fmt: str = "auto",
                 policy: Policy = "fail", check_images: bool = True) -> tuple[list[Sample], DataReport]:
    """Read and validate every record of ``path``: :func:`fedalign.silo.stream.stream_records` (the one
    reader of both formats) held in a list, with its report.

    Checks per record: the fields, the image file (exists; decodes when ``check_images``), one
    ``<image>`` in the prompt, a non-empty caption. ``policy='fail'`` raises the first problem
    as DataError("file:line: ..."); ``'skip'`` drops it and counts it in the report.
    """
    from fedalign.silo.stream import stream_records

    p = Path(path)
    rep: dict[str, Any] = {}
    samples = list(stream_records(p, image_root=image_root, fmt=fmt, policy=policy, check_images=check_images,
                                  report=rep))
    report = DataReport(str(p), rep["kept"], rep["skipped"], list(rep["problems"]))
    if not samples:
        raise DataError(f"{p}: no usable records (skipped {report.skipped})")
    return samples, report


def fingerprint(samples: Sequence[Sample]) -> str:
    """A short hash of the records' identity (origin, image, caption) to pin a cursor to its data."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.origin}\x00{s.image if not hasattr(s.image, 'size') else ''}\x00{s.caption}\n".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class Shard:
    """Indices of one round's fresh records, and which pass over the data they belong to."""

    indices: tuple[int, ...]
    pass_index: int
    shard_index: int


class ShardCursor:
    """A persisted shuffled order plus a cursor: each shard is fresh and disjoint from the others.

    The file holds the whole order (robust to library changes in shuffling), the position, and
    the data fingerprint; it is rewritten atomically before a shard is returned. When a pass is
    used up, the next pass (a fresh shuffle) starts only if ``max_passes`` allows; otherwise
    DataError says the one-pass budget of data is spent.
    """

    def __init__(self, path: str | Path, n_records: int, data_fingerprint: str, *, seed: int,
                 max_passes: int = 1):
        self.path = Path(path)
        self.n = n_records
        self.max_passes = max_passes
        self._seed = seed
        if self.path.exists():
            try:
                st = json.loads(self.path.read_text())
                ok = st["fingerprint"] == data_fingerprint and len(st["order"]) == n_records
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{self.path}: unreadable shard cursor: {exc}") from None
            if not ok:
                raise DataError(f"{self.path}: shard cursor belongs to different data "
                                "(fingerprint or size differs); remove it to start a new run")
            self.state = st
        else:
            self.state = {"fingerprint": data_fingerprint, "pass": 0, "cursor": 0, "shards": 0,
                          "order": self._order(0)}

    def _order(self, pass_index: int) -> list[int]:
        g = torch.Generator().manual_seed(self._seed * 1_000_003 + pass_index)
        return torch.randperm(self.n, generator=g).tolist()

    @property
    def samples_used(self) -> int:
        return self.state["pass"] * self.n + self.state["cursor"]

    @property
    def remaining_in_pass(self) -> int:
        return self.n - self.state["cursor"]

    def next_shard(self, size: int) -> Shard:
        """The next ``size`` unused records (fewer at the end of a pass), persisted first."""
        shard, st = self._advance(size)
        atomic_write_json(self.path, st)
        self.state = st
        return shard

    def peek_shard(self, size: int) -> Shard:
        """The shard :meth:`next_shard` would return, without using it (DataError if spent)."""
        return self._advance(size)[0]

    def _advance(self, size: int) -> tuple[Shard, dict]:
        if size < 1:
            raise ValueError("shard size must be >= 1")
        st = dict(self.state)
        if st["cursor"] >= self.n:
            if st["pass"] + 1 >= self.max_passes:
                raise DataError(f"{self.path}: all {self.n} records used in {st['pass'] + 1} pass(es) "
                                f"(data.max_passes = {self.max_passes}); one-pass data is spent")
            st.update({"pass": st["pass"] + 1, "cursor": 0, "order": self._order(st["pass"] + 1)})
        a = st["cursor"]
        b = min(self.n, a + size)
        if self.n - b < size // 2:  # fold a tiny tail into this shard (its sample rate would be ~1)
            b = self.n
        shard = Shard(tuple(st["order"][a:b]), st["pass"], st["shards"])
        st.update({"cursor": b, "shards": st["shards"] + 1})
        return shard, st


@dataclass(frozen=True)
class ProbeItem:
    """A probe read from a file: an image, a prompt with ``<image>``, candidates, the right index."""

    image: Any
    prompt: str
    candidates: tuple[str, ...]
    answer: int
    kind: str = "mc"


def read_eval_items(path: str | Path, *, image_root: str | Path | None = None) -> list[ProbeItem]:
    """JSONL of ``{"image", "prompt", "candidates", "answer", "kind"}``; DataError names the line."""
    p = Path(path)
    root = Path(image_root) if image_root is not None else p.parent
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read eval items: {exc}") from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        origin = f"{p}:{n}"
        try:
            obj = json.loads(line)
            cands = tuple(str(c) for c in obj["candidates"])
            item = ProbeItem(root / str(obj["image"]), str(obj["prompt"]), cands, int(obj["answer"]),
                             str(obj.get("kind", "mc")))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{origin}: bad eval item ({type(exc).__name__}: {exc})") from None
        if item.prompt.count(IMAGE_TOKEN) != 1:
            raise DataError(f"{origin}: prompt must contain {IMAGE_TOKEN} exactly once")
        if len(cands) < 2 or not 0 <= item.answer < len(cands):
            raise DataError(f"{origin}: need >= 2 candidates and 0 <= answer < {len(cands)}")
        check_image(Path(item.image), origin)
        items.append(item)
    return items


def cursor_status(path: str | Path) -> dict[str, str]:
    """What ``silo status`` shows of a :class:`ShardCursor` file (this module writes it)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {"data cursor": ", ".join(f"{k}={v}" for k, v in doc.items() if not isinstance(v, (list, dict)))}
    except ValueError:
        return {"data cursor": "unreadable"}
