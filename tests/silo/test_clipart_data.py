"""examples/clipart's data pipeline on synthetic SVG/PNG fixtures (no Debian package needed): captions
from title, description and keywords; collections capped; the category split, the test split and the
public set disjoint; a .deb read without dpkg; PNGs composited on white. One test reads the real
package when a prepared cache holds it and skips otherwise."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from example_modules import load_example

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    return load_example("clipart", name)


@pytest.fixture(scope="module")
def data():
    return _load("clipart_data")


SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/"
     xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:description>{desc}</dc:description>
<dc:subject><rdf:Bag>{kws}</rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata><rect width="4" height="4"/></svg>"""


def _svg(root: Path, rel: str, title: str, desc: str = "", kws=()) -> Path:
    p = root / (rel + ".svg")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(SVG.format(title=title, desc=desc, kws="".join(f"<rdf:li>{k}</rdf:li>" for k in kws)))
    return p


def test_captions_from_title_description_and_keywords(data, tmp_path):
    owl = data.read_metadata(_svg(tmp_path, "animals/birds/owl_on_branch", "Owl on  Branch", "A wise owl sits. Long.",
                                  ["owl", "animal", "hash", "bird", "extra"]), tmp_path)
    assert owl.category == "animals" and owl.rel == "animals/birds/owl_on_branch"
    assert owl.keywords == ("owl", "animal", "hash", "bird", "extra")
    # the title, the description's first sentence, two keywords the title does not say; junk dropped
    assert data.make_caption(owl) == "Owl on Branch, a wise owl sits: animal, bird."
    assert data.make_caption(owl) == data.make_caption(owl)  # deterministic
    junk = data.read_metadata(_svg(tmp_path, "computer/icons/folder_yellow", "Part of the Flat Icon Collection (2004)",
                                   "HASH(0x8677e2c)", ["hash(0x866e640)", "icons", "folder"]), tmp_path)
    # a collection's title gives way to the file name; hash junk and URLs never reach a caption
    assert data.make_caption(junk) == "Folder yellow."
    url = data.read_metadata(_svg(tmp_path, "food/pop_can", "Pop Can", "see http://example.org", ["beverage"]), tmp_path)
    assert data.make_caption(url) == "Pop Can: beverage."
    empty = data.read_metadata(_svg(tmp_path, "shapes/x_01", ""), tmp_path)
    assert data.make_caption(empty) == "X."


def test_collections_are_capped_and_captions_use_file_names(data):
    D = data.Drawing
    stars = [D(f"shapes/stars/star_{i:03d}pt", "shapes", "gramastar", "", ("stars",)) for i in range(30)]
    solo = [D(f"animals/cat_{i}", "animals", f"Cat number {chr(97 + i)}", "", ("mammal",)) for i in range(5)]
    recs = data.index_drawings(stars + solo, cap=10)
    assert sum(r["category"] == "shapes" for r in recs) == 10 and sum(r["category"] == "animals" for r in recs) == 5
    assert all(r["caption"].startswith("Star") for r in recs if r["category"] == "shapes")
    assert [r["rel"] for r in recs] == sorted(r["rel"] for r in recs)


def test_split_is_disjoint_stratified_and_by_category(data):
    rng = np.random.default_rng(0)
    cats = [c for g in data.SILO_GROUPS for c in g]
    recs = [{"rel": f"{c}/d{i}", "category": c} for c in cats for i in range(int(rng.integers(5, 60)))]
    sp = data.split(recs)
    parts = [set(sp.test), set(sp.public), *map(set, sp.silos)]
    assert sum(map(len, parts)) == len(recs) == len(set().union(*parts))  # everything once, nowhere twice
    assert not set(sp.public) & set().union(*map(set, sp.silos))  # the coordinator's set: in no silo
    for k, s in enumerate(sp.silos):  # a silo holds only its own categories (natural non-IID)
        assert {recs[i]["category"] for i in s} <= set(data.SILO_GROUPS[k])
    big = [c for c in cats if sum(r["category"] == c for r in recs) >= 20]
    assert {recs[i]["category"] for i in sp.test} >= set(big)  # the test split covers every category
    assert data.split(recs) == sp  # deterministic
    with pytest.raises(ValueError, match="no silo group"):
        data.split(recs + [{"rel": "nowhere/x", "category": "nowhere"}])


def _deb(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo("./" + name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    members = {"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buf.getvalue()}
    out = b"!<arch>\n"
    for name, blob in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(blob):<10}`\n".encode() + blob + (b"\n" if len(blob) % 2 else b"")
    path.write_bytes(out)


def test_deb_unpack_and_png_on_white(tmp_path):
    from PIL import Image

    prep = _load("prepare")
    png = io.BytesIO()
    im = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (10, 5, 30, 15))
    im.save(png, "PNG")
    _deb(tmp_path / "p.deb", {f"{prep.PNG_ROOT}/food/apple.png": png.getvalue(), "usr/share/doc/x": b"doc"})
    root = prep.unpack(tmp_path / "p.deb", tmp_path / "out", prep.PNG_ROOT)
    f = root / "food" / "apple.png"
    assert f.is_file() and not (tmp_path / "out" / "usr/share/doc/x").exists()
    assert prep.png_pixels(f) == 800
    a = prep.load_png(f, size=32)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert (a[1, 1] == 255).all()  # transparent and padding: white, not black
    assert a[16, 16, 0] > 200 and a[16, 16, 1] < 60  # the red square survives
    # the packages link drawings between categories (663 of the 8,121 SVGs): dpkg would install
    # them, so must we; a link out of the folder is refused with one line
    _deb(tmp_path / "l.deb", {f"{prep.PNG_ROOT}/food/apple.png": png.getvalue()},
         links={f"{prep.PNG_ROOT}/plants/apple.png": "../food/apple.png"})
    root = prep.unpack(tmp_path / "l.deb", tmp_path / "lout", prep.PNG_ROOT)
    assert (root / "plants" / "apple.png").is_file() and prep.png_pixels(root / "plants" / "apple.png") == 800
    _deb(tmp_path / "evil.deb", {}, links={f"{prep.PNG_ROOT}/food/x.png": "../../../../../../../../etc/passwd"})
    with pytest.raises(prep.PrepareError, match="evil.deb: refused member"):
        prep.unpack(tmp_path / "evil.deb", tmp_path / "evil", prep.PNG_ROOT)
    (tmp_path / "bad.deb").write_bytes(b"not an archive")
    with pytest.raises(prep.PrepareError, match="bad.deb"):
        prep.unpack(tmp_path / "bad.deb", tmp_path / "bad", prep.PNG_ROOT)


def test_the_real_package_when_prepared(data):
    import os

    base = Path(os.environ.get("FEDALIGN_CACHE") or Path.home() / ".cache" / "fedalign") / "openclipart"
    if not (base / "index.json").is_file():
        pytest.skip("OpenClipart not prepared (python examples/clipart/prepare.py)")
    doc = json.loads((base / "index.json").read_text())
    recs = doc["records"]
    assert doc["drawings"] == 8121 and 5000 < len(recs) < 8121
    assert all(r["caption"].endswith(".") and "hash(" not in r["caption"].lower() for r in recs)
    sp = data.split(recs)
    assert not set(sp.public) & set().union(*map(set, sp.silos)) and len(sp.silos) == 5
