"""The model card (``README.md``, Hugging Face's convention) written beside every exported projector.

What leaves carries its papers: the frozen models it was aligned for, the projector's shape, the
data counts, rounds, silos, secure-sum scheme, strategy, (ε, δ) per silo, the writer's ledger head
(and the peer heads it witnessed) and the one command that verifies them.

:func:`render_card` is a pure function from a dict of facts to markdown; :func:`write_card` writes
it atomically beside the export. Callers (``silo train``, ``aggregator serve``) gather the facts;
a fact the writer cannot know is given as a sentence that says so (the aggregator learns only sums,
so it cannot know a silo's record count), never left out silently.

Facts (all optional except ``writer``)::

    writer          "silo hospital-a" | "aggregator"
    vision_tower    id or path of the frozen vision tower ("embedded" = the toy world's)
    llm             id or path of the frozen LM
    projector       {"kind": "mlp2x_gelu", "shapes": {"0.weight": [4096, 1024], ...}}
    files           names of the exported files in the same folder
    data            {silo: records (int) or a sentence}
    rounds          {"done": int, "planned": int | None, "included": [round ids] | None}
    silos           {"count": int | None, "survivors": {round: [silo ids]} | None, "note": str | None}
    scheme          "secagg" | "ckks" | "plain" | "local (no secure sum)"
    strategy        "fedcmp" ...
    privacy         {silo: {"epsilon": float | None, "delta": float | None, "source": str}}
    ledger          {"path": str, "index": int, "digest": str, "signed": bool}
    witnessed       [{"node": str, "index": int, "digest": str}]
    verify_command  "silo audit verify --config silo.toml"
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from fedalign.host.atomic import PRIVATE_MODE, atomic_write_text

__all__ = ["CARD_NAME", "render_card", "write_card", "ledger_facts"]

CARD_NAME = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, not a local path


def _base_models(facts: Mapping[str, Any]) -> list[str]:
    out = []
    for key in ("vision_tower", "llm"):
        v = facts.get(key)
        if isinstance(v, str) and _HUB_ID.match(v) and not Path(v).exists():
            out.append(v)
    return out


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML scalar


def _num(x: Any) -> str:
    if x is None:
        return "not reported"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def render_card(facts: Mapping[str, Any]) -> str:
    """Markdown with YAML front matter (library_name, tags, base_model where known) for ``facts``."""
    writer = str(facts.get("writer", "unknown"))
    tags = ["fedalign", "federated-learning", "llava", "multimodal-projector", "secure-aggregation"]
    privacy = facts.get("privacy") or {}
    if any(isinstance(p, Mapping) and p.get("epsilon") is not None for p in privacy.values()):
        tags.append("differential-privacy")
    lines = ["---", "library_name: fedalign", "tags:"] + [f"- {t}" for t in tags]
    base = _base_models(facts)
    if base:
        lines += ["base_model:"] + [f"- {_yaml_str(b)}" for b in base]
    lines += ["---", "", "# Federated multimodal projector", "",
              f"Written by the {writer} beside the exported projector. Every figure below is what the "
              f"{writer} knows; what it cannot know says so.", ""]

    lines += ["## Frozen models", "",
              f"- vision tower: `{facts.get('vision_tower') or 'not known to the writer'}`",
              f"- language model: `{facts.get('llm') or 'not known to the writer'}`",
              "", "Only the projector between them was trained; both stay frozen.", ""]

    proj = facts.get("projector") or {}
    lines += ["## Projector", "", f"- kind: `{proj.get('kind', 'unknown')}`"]
    for name, shape in (proj.get("shapes") or {}).items():
        lines.append(f"- `{name}`: {' x '.join(str(int(d)) for d in shape)}")
    files = facts.get("files") or []
    if files:
        lines.append("- files: " + ", ".join(f"`{f}`" for f in files))
    lines.append("")

    lines += ["## Data", ""]
    data = facts.get("data") or {}
    if not data:
        lines.append("- not known to the writer")
    for silo, n in data.items():
        lines.append(f"- {silo}: {n} record(s)" if isinstance(n, int) else f"- {silo}: {n}")
    lines.append("")

    rounds = facts.get("rounds") or {}
    lines += ["## Training", "",
              f"- rounds: {rounds.get('done', 'unknown')}"
              + (f" of {rounds['planned']} planned" if rounds.get("planned") is not None else "")]
    if rounds.get("included") is not None:
        lines.append("- rounds this silo's update was summed into: "
                     + (", ".join(str(r) for r in rounds["included"]) or "none"))
    lines += [f"- secure-sum scheme: `{facts.get('scheme', 'unknown')}`",
              f"- strategy: `{facts.get('strategy', 'unknown')}`"]
    silos = facts.get("silos") or {}
    if silos.get("count") is not None:
        lines.append(f"- silos: {silos['count']}")
    if silos.get("note"):
        lines.append(f"- silos: {silos['note']}")
    surv = silos.get("survivors") or {}
    if surv:
        lines += ["", "| round | silos summed |", "|---|---|"]
        lines += [f"| {r} | {', '.join(s) or 'none'} |" for r, s in surv.items()]
    lines.append("")

    lines += ["## Privacy (ε, δ) per silo", ""]
    if not privacy:
        lines.append("- not known to the writer")
    else:
        lines += ["| silo | ε | δ | as reported by |", "|---|---|---|---|"]
        for silo, p in privacy.items():
            p = p if isinstance(p, Mapping) else {}
            eps = "off (no DP)" if p.get("epsilon") is None and p.get("dp") is False else _num(p.get("epsilon"))
            lines.append(f"| {silo} | {eps} | {_num(p.get('delta'))} | {p.get('source', writer)} |")
    lines.append("")

    lines += ["## Ledger", ""]
    led = facts.get("ledger") or {}
    if led:
        lines += [f"- ledger: `{led.get('path', '?')}` ({'signed' if led.get('signed') else 'hash-chained, unsigned'})",
                  f"- final head: index {led.get('index')}, digest `{led.get('digest')}`"]
    else:
        lines.append("- no ledger")
    for w in facts.get("witnessed") or []:
        lines.append(f"- witnessed head of {w.get('node')}: index {w.get('index')}, digest `{w.get('digest')}`")
    lines += ["", "## Verify", "", "```", str(facts.get("verify_command", "")), "```", "",
              "This checks the ledger's hash chain, its signatures (with the roster's keys) and the witnessed "
              "heads; the heads above must match what it reports.", ""]
    return "\n".join(lines)


def ledger_facts(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The final head of the ledger at ``path`` and the newest head it witnessed of each peer."""
    from fedalign.protocol.ledger import WITNESS_KIND, read_ledger

    entries = read_ledger(path) if Path(path).exists() else []
    if not entries:
        return {"path": str(path), "index": -1, "digest": "", "signed": False}, []
    last = entries[-1]
    peers: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.kind == WITNESS_KIND and isinstance(e.fields.get("node"), str):
            peers[e.fields["node"]] = {"node": e.fields["node"], "index": e.fields.get("index"),
                                       "digest": e.fields.get("digest")}
    head = {"path": str(path), "index": last.seq, "digest": last.digest, "signed": last.signed}
    return head, list(peers.values())


def write_card(out_dir: str | os.PathLike, facts: Mapping[str, Any], mode: int = PRIVATE_MODE) -> Path:
    """Write ``README.md`` into ``out_dir`` (atomically, ``mode`` as the export's files)."""
    return atomic_write_text(Path(out_dir) / CARD_NAME, render_card(facts), mode)
