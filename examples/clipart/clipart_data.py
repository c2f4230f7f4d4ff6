"""OpenClipart as an image-caption federation: metadata, captions, splits (no torch, no network).

Debian's ``openclipart-svg`` package holds 8,121 public-domain drawings under
``usr/share/openclipart/svg/<category>/...``, each with Dublin Core metadata (``dc:title``,
``dc:description``, keywords in ``dc:subject``); ``openclipart-png`` holds the same drawings
pre-rendered at the same relative paths (``.png``). This module turns one drawing's metadata into
a short caption, deterministically, and splits the drawings into silos by category (natural
non-IID), a held-out test split and a small public set for the coordinator, disjoint from every silo.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Drawing", "read_metadata", "make_caption", "index_drawings", "SILO_GROUPS", "split", "Split"]

NS = {"dc": "http://purl.org/dc/elements/1.1/", "cc": "http://web.resource.org/cc/",
      "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}

# the 22 top-level categories, grouped into 5 silos of 1,000-2,000 drawings each (before the caps)
SILO_GROUPS: tuple[tuple[str, ...], ...] = (
    ("computer", "electronics"),
    ("shapes", "special", "decorations", "buttons", "logos", "unsorted"),
    ("signs_and_symbols", "geography", "science", "education", "office"),
    ("recreation", "people", "tools"),
    ("transportation", "food", "animals", "plants", "buildings", "containers"),
)

# keywords that say nothing about the picture (collection bookkeeping, the category tree itself)
JUNK_KEYWORDS = frozenset("""hash icons icon theme themes unsorted magick appicon application action clipart clip art
lemon_theme_icon mimetypes mime-types filesystem device special image picture drawing svg cartoon simple
white black color colour line""".split())
TITLE_COLLECTION = 8  # a title shared by at least this many drawings names a collection, not the drawing
MAX_TITLE_WORDS, MAX_DESC_WORDS, MAX_KEYWORDS = 6, 8, 2


@dataclass(frozen=True)
class Drawing:
    """One drawing: ``rel`` is its path under the package's svg/ root without the extension."""

    rel: str
    category: str
    title: str
    description: str
    keywords: tuple[str, ...]

    def to_json(self) -> dict:
        return {**asdict(self), "keywords": list(self.keywords)}


def read_metadata(svg: Path, root: Path) -> Drawing:
    """Title, description and keywords from one SVG's RDF metadata (empty strings when absent)."""
    rel = svg.relative_to(root).with_suffix("").as_posix()
    try:
        work = ET.parse(svg).getroot().find(".//cc:Work", NS)
    except ET.ParseError:
        work = None

    def text(tag: str) -> str:
        return " ".join(((work.findtext(tag, default="", namespaces=NS) if work is not None else "") or "").split())

    kws = tuple(" ".join(li.text.split()) for li in (work.findall("dc:subject/rdf:Bag/rdf:li", NS) if work is not None
                                                     else []) if li.text and li.text.strip())
    return Drawing(rel, rel.split("/", 1)[0], text("dc:title"), text("dc:description"), kws)


def _words(s: str) -> list[str]:
    return re.findall(r"[a-z]+", s.lower())


def _clean_title(d: Drawing, collection: bool) -> str:
    t = re.sub(r"(?i)^clipart by [^-]+- *", "", d.title)  # "Clipart by Nicu Buculei - jigsaw_red_10"
    if collection or not t or "hash(" in t.lower() or re.search(r"(?i)collection|theme|iconset", t):
        t = d.rel.rsplit("/", 1)[-1]  # a collection's title: the file's own name says more
    words = [w for w in re.split(r"[\s_\-]+", t) if w and not any(c.isdigit() for c in w)]
    words = [re.sub(r"[^\w'&]", "", w) for w in words]
    words = [w for w in words if w][:MAX_TITLE_WORDS]
    s = " ".join(words) or d.category.replace("_", " ")
    return s[0].upper() + s[1:]


def _clean_description(d: Drawing, title: str) -> str:
    s = re.split(r"(?<=[.!?])\s", d.description, maxsplit=1)[0].rstrip(".!? ")
    if (not s or not s.isascii() or "http" in s.lower() or "hash(" in s.lower() or "@" in s
            or len(s.split()) > MAX_DESC_WORDS or _words(s) == _words(title)
            or set(_words(s)) <= set(_words(title)) | set(_words(d.rel))):
        return ""
    return s


def make_caption(d: Drawing, *, collection: bool = False) -> str:
    """A short deterministic caption: the title (or the file name when the title names a
    collection), a short first sentence of the description when it adds words, and up to two
    keywords the title does not already say, e.g. "Owl on Branch: animal, bird."."""
    title = _clean_title(d, collection)
    desc = _clean_description(d, title)
    said = set(_words(title)) | set(_words(desc))
    kws: list[str] = []
    for k in d.keywords:
        k = k.lower().strip()
        if (k in JUNK_KEYWORDS or not re.fullmatch(r"[a-z][a-z ]{1,18}[a-z]", k) or k.replace(" ", "_") == d.category
                or set(_words(k)) <= said or k in kws):
            continue
        kws.append(k)
        said |= set(_words(k))
        if len(kws) == MAX_KEYWORDS:
            break
    out = title + (f", {desc[0].lower() + desc[1:]}" if desc else "")
    return out + (": " + ", ".join(kws) if kws else "") + "."


def index_drawings(drawings: list[Drawing], *, cap: int = 100) -> list[dict]:
    """Captions for every drawing, with each collection (a title shared by ``TITLE_COLLECTION`` or
    more drawings: 1,375 generated stars are all titled "gramastar") capped at ``cap`` drawings,
    every k-th in path order, so that no collection of near-duplicates dominates. Sorted by path."""
    drawings = sorted(drawings, key=lambda d: d.rel)
    counts = Counter(d.title for d in drawings if d.title)
    groups: dict[str, list[Drawing]] = {}
    for d in drawings:
        groups.setdefault(d.title if counts[d.title] >= TITLE_COLLECTION else "\0" + d.rel, []).append(d)
    out = []
    for key, ds in groups.items():
        step = max(1, -(-len(ds) // cap))
        for d in ds[::step][:cap]:
            out.append({**d.to_json(), "caption": make_caption(d, collection=not key.startswith("\0"))})
    return sorted(out, key=lambda r: r["rel"])


@dataclass(frozen=True)
class Split:
    test: list[int]
    public: list[int]
    silos: list[list[int]]


def _rank(rel: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}/{rel}".encode()).hexdigest()


def split(records: list[dict], *, test_frac: float = 0.1, public_frac: float = 0.05, groups=SILO_GROUPS,
          salt: str = "fedalign-clipart") -> Split:
    """Indices into ``records``: a held-out test split and a public set, each stratified over all
    categories (the first ``test_frac`` / next ``public_frac`` of each category in a hash order),
    and one silo per entry of ``groups`` holding the rest of its categories. Deterministic in
    ``salt``; a category in no group is an error (it would silently vanish)."""
    where = {c: k for k, g in enumerate(groups) for c in g}
    by_cat: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_cat.setdefault(r["category"], []).append(i)
    missing = sorted(set(by_cat) - set(where))
    if missing:
        raise ValueError(f"categories {missing} belong to no silo group")
    test, public, silos = [], [], [[] for _ in groups]
    for cat, idx in sorted(by_cat.items()):
        idx = sorted(idx, key=lambda i: _rank(records[i]["rel"], salt))
        n_test, n_pub = round(test_frac * len(idx)), round(public_frac * len(idx))
        test += idx[:n_test]
        public += idx[n_test : n_test + n_pub]
        silos[where[cat]] += idx[n_test + n_pub :]
    return Split(sorted(test), sorted(public), [sorted(s) for s in silos])
