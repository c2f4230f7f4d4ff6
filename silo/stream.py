"""The record readers: one streaming reader for every data format (the FORMATS table), an
incremental JSON array parser, and one-pass shards. ``silo.data.read_records`` is this reader held in
a list; a new format is a row of FORMATS (its suffix, how to iterate its records, how to parse one).

LLaVA's stage-1 file (558K records, ~170 MB of JSON) becomes several GB as Python objects;
:func:`read_records` holds them all. Here the file is read in chunks and each array element is
decoded as soon as it is complete (``json.JSONDecoder.raw_decode`` on a sliding buffer), so
memory is bounded by the chunk size plus the largest record, whatever the file's length.
Records get the same checks and the same "file:line: what" errors as :func:`read_records`.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from fedalign.protocol.errors import DataError
from fedalign.silo.data import DEFAULT_PROMPT, IMAGE_TOKEN, Policy, Sample, check_image

__all__ = ["FORMATS", "RecordFormat", "iter_json_array", "iter_jsonl", "stream_records", "stream_shards",
           "detect_format", "to_sample"]

_WS = " \t\r\n"


def iter_json_array(path: str | Path, *, chunk_chars: int = 1 << 20, max_record_chars: int = 64 << 20
                    ) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, element)`` for each element of the top-level JSON array in ``path``.

    Reads ``chunk_chars`` characters at a time; an element longer than ``max_record_chars`` is an
    error (a bound on memory for a damaged file whose element never closes).
    """
    p = Path(path)
    dec = json.JSONDecoder()
    try:
        fh = open(p, "rb")
    except FileNotFoundError:
        raise DataError(f"{p}: data file not found") from None
    with fh:
        utf8 = codecs.getincrementaldecoder("utf-8")()
        buf, i, line, eof = "", 0, 1, False

        def more() -> bool:
            nonlocal buf, i, eof
            if eof:
                return False
            raw = fh.read(chunk_chars)
            try:
                text = utf8.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise DataError(f"{p}:{line}: not UTF-8: {exc.reason}") from None
            eof = not raw
            if text:  # drop what was consumed (positions held by callers stay valid otherwise)
                buf = buf[i:] + text
                i = 0
            return not eof

        def skip(chars: str) -> None:
            nonlocal i, line
            while True:
                while i < len(buf) and buf[i] in chars:
                    line += buf[i] == "\n"
                    i += 1
                if i < len(buf) or not more():
                    return

        skip(_WS)
        if buf[i : i + 1] != "[":
            raise DataError(f"{p}:{line}: expected a JSON array of records (LLaVA stage-1 format)")
        i += 1
        first = True
        while True:
            skip(_WS)
            if i >= len(buf):
                raise DataError(f"{p}:{line}: JSON array is not closed")
            if buf[i] == "]":
                return
            if not first:
                if buf[i] != ",":
                    raise DataError(f"{p}:{line}: invalid JSON: expected ',' or ']' between records")
                i += 1
                skip(_WS)
            first = False
            start_line = line
            while True:
                try:
                    obj, end = dec.raw_decode(buf, i)
                    # a number may go on past what has been read ("3." + "5"): decide with more text
                    if isinstance(obj, (int, float)) and not isinstance(obj, bool) and len(buf) - end < 64 and more():
                        continue
                    break
                except json.JSONDecodeError:
                    if len(buf) - i > max_record_chars:
                        raise DataError(f"{p}:{start_line}: record longer than {max_record_chars} characters") from None
                    if more():
                        continue
                    try:  # the whole rest of the file is in the buffer: say where it breaks
                        dec.raw_decode(buf, i)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{p}:{start_line + buf.count(chr(10), i, exc.pos)}: invalid JSON: "
                                        f"{exc.msg}") from None
            line += buf.count("\n", i, end)
            i = end
            yield start_line, obj


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, object)`` per non-blank line (a line that is not JSON: its JSONDecodeError)."""
    p = Path(path)
    try:
        fh = open(p, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{p}: data file not found") from None
    with fh:
        n = 0
        try:
            for n, text in enumerate(fh, 1):
                if text.strip():
                    try:
                        yield n, json.loads(text)
                    except json.JSONDecodeError as exc:
                        yield n, exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{p}:{n + 1}: not UTF-8: {exc.reason}") from None


def parse_llava(obj: Any) -> tuple[str, str, str]:
    if not isinstance(obj, dict) or "image" not in obj or "conversations" not in obj:
        raise ValueError("expected an object with 'image' and 'conversations'")
    conv = obj["conversations"]
    if not isinstance(conv, list) or len(conv) < 2:
        raise ValueError("'conversations' must hold a human turn and a gpt turn")
    human = next((t for t in conv if isinstance(t, dict) and t.get("from") == "human"), None)
    gpt = next((t for t in conv if isinstance(t, dict) and t.get("from") == "gpt"), None)
    if human is None or gpt is None:
        raise ValueError("'conversations' needs a turn from 'human' and one from 'gpt'")
    return str(obj["image"]), str(human.get("value", "")), str(gpt.get("value", ""))


def parse_jsonl(obj: Any) -> tuple[str, str, str]:
    if not isinstance(obj, dict) or "image" not in obj or "caption" not in obj:
        raise ValueError("expected an object with 'image' and 'caption'")
    return str(obj["image"]), str(obj.get("prompt", DEFAULT_PROMPT)), str(obj["caption"])


def detect_format(path: Path, fmt: str) -> str:
    """``fmt``, or the format whose suffix ``path`` has (``auto``)."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"{path}: data.format {fmt!r} is not one of {sorted(FORMATS)}")
        return fmt
    for name, f in FORMATS.items():
        if path.suffix.lower() == f.suffix:
            return name
    raise DataError(f"{path}: cannot tell the format from the suffix; set data.format")


def to_sample(obj: Any, origin: str, parse, root: Path, check_images: bool) -> Sample:
    """One parsed record checked (fields, one ``<image>``, a caption, the image file) as a Sample."""
    try:
        image, prompt, caption = parse(obj)
    except ValueError as exc:
        raise DataError(f"{origin}: {exc}") from None
    if prompt.count(IMAGE_TOKEN) != 1:
        raise DataError(f"{origin}: prompt must contain {IMAGE_TOKEN} exactly once, got {prompt!r}")
    if not caption.strip():
        raise DataError(f"{origin}: empty caption")
    img_path = Path(image) if Path(image).is_absolute() else root / image
    if check_images:
        check_image(img_path, origin)
    elif not img_path.is_file():
        raise DataError(f"{origin}: image file not found: {img_path}")
    return Sample(img_path, prompt, caption.strip(), origin)


@dataclass(frozen=True)
class RecordFormat:
    suffix: str  # what ``data.format = "auto"`` recognises
    items: Callable[[Path], Iterator[tuple[int, Any]]]  # (line, object or its JSON error) per record
    parse: Callable[[Any], tuple[str, str, str]]  # object -> (image, prompt, caption); ValueError if not one


FORMATS: dict[str, RecordFormat] = {
    "jsonl": RecordFormat(".jsonl", iter_jsonl, parse_jsonl),  # {"image", "caption", "prompt"?} a line
    "llava_json": RecordFormat(".json", iter_json_array, parse_llava),  # LLaVA's stage-1 array
}


def stream_records(path: str | Path, *, image_root: str | Path | None = None, fmt: str = "auto",
                   policy: Policy = "fail", check_images: bool = True, report: dict | None = None
                   ) -> Iterator[Sample]:
    """Samples of ``path`` one at a time, checked like :func:`read_records` (``policy`` fail/skip).

    ``report``, when given, counts ``kept`` and ``skipped`` and keeps the first problems.
    """
    p = Path(path)
    root = Path(image_root) if image_root is not None else p.parent
    if policy not in ("skip", "fail"):
        raise DataError(f"bad-record policy must be 'skip' or 'fail', got {policy!r}")
    form = FORMATS[detect_format(p, fmt)]
    rep = report if report is not None else {}
    rep.update(kept=0, skipped=0, problems=[])

    for line, obj in form.items(p):
        origin = f"{p}:{line}"
        try:
            if isinstance(obj, Exception):
                raise DataError(f"{origin}: invalid JSON: {obj.msg}")
            sample = to_sample(obj, origin, form.parse, root, check_images)
        except DataError as exc:
            if policy == "fail":
                raise
            rep["skipped"] += 1
            if len(rep["problems"]) < 20:
                rep["problems"].append(str(exc))
            continue
        rep["kept"] += 1
        yield sample


def stream_shards(samples: Iterator[Sample], shard_size: int) -> Iterator[list[Sample]]:
    """One pass as consecutive shards of ``shard_size`` records (the last may be shorter)."""
    if shard_size < 1:
        raise DataError(f"data.shard_size must be at least 1, got {shard_size}")
    shard: list[Sample] = []
    for s in samples:
        shard.append(s)
        if len(shard) == shard_size:
            yield shard
            shard = []
    if shard:
        yield shard
