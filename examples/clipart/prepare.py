"""Prepare OpenClipart for examples/clipart: fetch Debian's packages, captions, tower features.

    python examples/clipart/prepare.py            # into $FEDALIGN_CACHE/openclipart (default ~/.cache/fedalign)

1. Fetches ``openclipart-svg`` (25 MB: the drawings' metadata) and ``openclipart-png`` (131 MB: the
   same drawings pre-rendered) with ``apt-get download`` (Debian's registry; no root, nothing is
   installed) unless their ``.deb`` files are already in ``<cache>/openclipart/deb`` (or ``--debs``).
2. Unpacks them there (a .deb is an ``ar`` archive around ``data.tar.*``; read here in Python).
3. Reads every SVG's title, description and keywords and builds one short caption per drawing
   (``clipart_data.make_caption``; collections of near-duplicates are capped at 100), writes ``index.json``.
4. Runs EfficientNet-Lite0 once per drawing at 128 px (the PNG composited on white, padded to a
   square), pools its 4x4 grid to 2x2 and caches the features (float16) beside the index.

Everything is deterministic; rerunning reuses what is there. Bad input: one line, non-zero exit.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from fedalign.host.process import apply_process_defaults  # noqa: E402

apply_process_defaults()

import numpy as np  # noqa: E402

from clipart_data import index_drawings, read_metadata  # noqa: E402

PACKAGES = ("openclipart-svg", "openclipart-png")
TOWER = "torch:efficientnet-lite0@128"  # a 4x4 grid of 1280-d features, pooled to 2x2 for the cache
SIZE = 128
MAX_PIXELS = 16_000_000  # 19 PNGs are rendered at up to 16,000 px a side (231 M pixels): left out
SVG_ROOT = "usr/share/openclipart/svg"
PNG_ROOT = "usr/share/openclipart/png"


class PrepareError(Exception):
    pass


def say(msg: str) -> None:
    print(msg, flush=True)


def fetch_debs(deb_dir: Path) -> dict[str, Path]:
    """The two packages' .deb files in ``deb_dir``, fetched with ``apt-get download`` when missing."""
    deb_dir.mkdir(parents=True, exist_ok=True)

    def found():
        return {p: sorted(deb_dir.glob(f"{p}_*.deb")) for p in PACKAGES}

    have = found()
    missing = [p for p, fs in have.items() if not fs]
    if missing:
        if shutil.which("apt-get") is None:
            raise PrepareError(f"no apt-get here: download {', '.join(missing)} (.deb, from any Debian mirror) "
                               f"into {deb_dir} and rerun")
        say(f"  apt-get download {' '.join(missing)} (into {deb_dir}) ...")
        r = subprocess.run(["apt-get", "download", *missing], cwd=deb_dir, capture_output=True, text=True)
        have = found()
        if r.returncode != 0 or any(not have[p] for p in missing):
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise PrepareError(f"apt-get download {' '.join(missing)} failed ({last}); run `apt-get update` or put "
                               f"the .deb files into {deb_dir}")
    return {p: fs[-1] for p, fs in have.items()}


def deb_members(deb: Path) -> dict[str, bytes]:
    """The members of a .deb (an ``ar`` archive)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise PrepareError(f"{deb}: not a .deb (ar) archive; delete it and rerun")
    out, pos = {}, 8
    while pos + 60 <= len(raw):
        head = raw[pos : pos + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        out[name] = raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def unpack(deb: Path, dest: Path, prefix: str) -> Path:
    """Extract the files under ``prefix`` from ``deb``'s data archive into ``dest`` (once)."""
    root = dest / prefix
    done = dest / ".unpacked"
    if done.is_file():
        return root
    data = [v for k, v in deb_members(deb).items() if k.startswith("data.tar")]
    if not data:
        raise PrepareError(f"{deb}: no data.tar.* member; delete it and rerun")
    with tarfile.open(fileobj=io.BytesIO(data[0]), mode="r:*") as tar:
        # links too: 663 of the 8,121 SVGs (and many PNGs) are relative symlinks between categories,
        # which dpkg would install; the "data" filter refuses any that points outside ``dest``
        members = [m for m in tar.getmembers()
                   if (m.isfile() or m.issym() or m.islnk()) and m.name.lstrip("./").startswith(prefix)]
        try:
            tar.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as e:
            raise PrepareError(f"{deb}: refused member ({e}); delete {dest} and the .deb, and rerun") from None
    done.write_text(deb.name)
    return root


def load_png(path: Path, size: int = SIZE) -> np.ndarray:
    """A drawing as (size, size, 3) uint8: composited on white, padded to a square, resized."""
    from PIL import Image

    im = Image.open(path).convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(bg, im).convert("RGB")
    s = max(im.size)
    sq = Image.new("RGB", (s, s), (255, 255, 255))
    sq.paste(im, ((s - im.size[0]) // 2, (s - im.size[1]) // 2))
    return np.asarray(sq.resize((size, size), Image.BILINEAR))


def png_pixels(path: Path) -> int:
    """Width x height from a PNG's header (IHDR), without decoding it."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise PrepareError(f"{path}: not a PNG; delete the openclipart folder in the cache and rerun")
    w, h = struct.unpack(">II", head[16:24])
    return int(w) * int(h)


class Pictures:
    """The drawings' PNGs, loaded on slicing (the tower reads them a batch at a time)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, sl: slice) -> list[np.ndarray]:
        return [load_png(p) for p in self.paths[sl]]


def pool2x2(f):
    """(B, 16, C) 4x4 grid -> (B, 4, C) 2x2 grid by averaging each quadrant."""
    b, n, c = f.shape
    g = int(round(n ** 0.5))
    return f.reshape(b, 2, g // 2, 2, g // 2, c).mean((2, 4)).reshape(b, 4, c)


def prepare(cache: Path, debs: Path | None = None, *, features: bool = True):
    """Everything above; returns ({"index": path, "records": n, "drawings": n}, the records,
    their (n, 4, 1280) features or None)."""
    base = cache / "openclipart"
    files = fetch_debs(debs or base / "deb")
    svg_root = unpack(files["openclipart-svg"], base / "svg", SVG_ROOT)
    png_root = unpack(files["openclipart-png"], base / "png", PNG_ROOT)
    index = base / "index.json"
    if not index.is_file():
        t0 = time.perf_counter()
        svgs = sorted(svg_root.rglob("*.svg"))
        if not svgs:
            raise PrepareError(f"{svg_root}: no SVG files; delete {base} and rerun")
        recs = index_drawings([read_metadata(p, svg_root) for p in svgs])
        recs = [r for r in recs if (png_root / (r["rel"] + ".png")).is_file()]
        n = len(recs)
        recs = [r for r in recs if png_pixels(png_root / (r["rel"] + ".png")) <= MAX_PIXELS]
        tmp = index.with_suffix(".tmp")
        tmp.write_text(json.dumps({"drawings": len(svgs), "too_large": n - len(recs), "records": recs}, indent=0))
        tmp.replace(index)
        say(f"  {len(svgs)} drawings -> {len(recs)} captioned records ({time.perf_counter() - t0:.1f}s): {index}")
    doc = json.loads(index.read_text())
    recs = doc["records"]
    out = {"index": str(index), "records": len(recs), "drawings": doc["drawings"]}
    feats = None
    if features:
        from common_real import tower_features

        key = json.dumps([r["rel"] for r in recs]).encode() + f"/{SIZE}/pool2x2".encode()
        feats = tower_features(Pictures([png_root / (r["rel"] + ".png") for r in recs]), base, tower=TOWER,
                       tag="clipart-features", key=key, batch=50, unit="drawing", pool=pool2x2)
    return out, recs, feats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--debs", type=Path, default=None, help="folder holding the two .deb files (default: fetch)")
    ap.add_argument("--no-features", action="store_true", help="stop after the captions")
    ap.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = ap.parse_args(argv)
    from common_real import cache_dir

    try:
        out, _, feats = prepare(cache_dir(), args.debs, features=not args.no_features)
        out["features"] = list(feats.shape) if feats is not None else None
    except (PrepareError, OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    say(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
