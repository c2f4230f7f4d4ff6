"""The model card (``README.md``, Hugging Face's convention) written beside every exported projector.

What leaves carries its papers: the frozen models it was aligned for, the projector's kind and
shapes, the data counts, rounds, silos, secure-sum scheme, strategy, (ε, δ) per silo, the writer's
final ledger head and the one command that verifies them (issue 26, item 8).

:func:`render_card` is a pure function from a dict of facts to markdown with YAML front matter
(``library_name``, ``tags``, ``base_model`` where the models are Hub ids); :func:`write_card`
writes it atomically, 0644 (a card is meant to be read). Callers (``silo train``, ``aggregator
serve``) gather the facts. A fact that is missing is written as "not recorded", never left out; a
fact the writer cannot know is given as a sentence that says so (the aggregator learns only sums,
so it cannot know a silo's record count).

Facts (every key optional)::

    writer            "silo hospital-a" | "aggregator"
    vision_tower      id or path of the frozen vision tower
    llm               id or path of the frozen language model
    models_source     where the writer learnt them ("declared by a, b at join"), optional
    projector_kind    "mlp2x_gelu" | "linear" | ...
    projector_shapes  {"0.weight": [4096, 1024], ...}
    files             names of the exported files in the same folder
    data              {silo: records (int) or a sentence}
    rounds            {"done": int, "planned": int | None, "included": [round ids] | None}
    silos             [silo ids] or a sentence
    survivors         {round: [silo ids]} or a sentence
    scheme            "secagg" | "ckks" | "plain" | a sentence
    strategy          "fedcmp" ...
    strategy_options  {name: value}
    privacy           {silo: {"epsilon": float | None, "delta": float | None, "source": str}}
    ledger_head       "INDEX:SHA256" (:func:`fedalign.compliance.audit.ledger_head`) or None
    ledger            path of the writer's ledger
    witnessed         {peer: "INDEX:SHA256"}: the newest head of each peer's ledger the writer's ledger witnessed
    verify_command    "silo audit verify --config silo.toml"
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from fedalign.host.atomic import atomic_write_text

__all__ = ["CARD_NAME", "CARD_MODE", "NOT_RECORDED", "render_card", "write_card", "head_text", "ledger_facts"]

CARD_NAME = "README.md"
CARD_MODE = 0o644
NOT_RECORDED = "not recorded"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, not a local path


def _v(x: Any) -> str:
    """A fact as text; missing (None, empty) is "not recorded"."""
    if x is None or x == "" or x == [] or x == {}:
        return NOT_RECORDED
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, Mapping):
        return ", ".join(f"{k}={_v(v)}" for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return ", ".join(_v(v) for v in x)
    return str(x)


def _base_models(facts: Mapping[str, Any]) -> list[str]:
    out = []
    for key in ("vision_tower", "llm"):
        v = facts.get(key)
        if isinstance(v, str) and _HUB_ID.match(v) and not Path(v).exists():
            out.append(v)
    return out


def head_text(head: tuple[int, str] | None) -> str | None:
    """``INDEX:SHA256`` for :func:`fedalign.compliance.audit.ledger_head`'s (index, digest)."""
    return None if head is None else f"{head[0]}:{head[1]}"


def ledger_facts(path: str | os.PathLike) -> dict[str, Any]:
    """``ledger``, ``ledger_head`` and ``witnessed`` facts of the ledger at ``path`` (None: no ledger)."""
    from fedalign.compliance.audit import ledger_head
    from fedalign.compliance.entries import read_ledger
    from fedalign.compliance.witness import WITNESS_KIND

    p = Path(path)
    if not p.exists():
        return {"ledger": str(p), "ledger_head": None, "witnessed": None}
    peers = {e.fields["node"]: f"{e.fields.get('index')}:{e.fields.get('digest')}" for e in read_ledger(p)
             if e.kind == WITNESS_KIND and isinstance(e.fields.get("node"), str)}
    return {"ledger": str(p), "ledger_head": head_text(ledger_head(p)), "witnessed": peers or "none"}


def render_card(facts: Mapping[str, Any]) -> str:
    """Markdown with YAML front matter for ``facts`` (module docstring); missing facts say "not recorded"."""
    writer = _v(facts.get("writer"))
    privacy = facts.get("privacy") or {}
    tags = ["fedalign", "federated-learning", "llava", "multimodal-projector"]
    if any(isinstance(p, Mapping) and p.get("epsilon") is not None for p in privacy.values()):
        tags.append("differential-privacy")
    lines = ["---", "library_name: fedalign", "tags:"] + [f"- {t}" for t in tags]
    base = _base_models(facts)
    if base:  # JSON strings are valid YAML scalars
        lines += ["base_model:"] + [f"- {json.dumps(b)}" for b in base]
    lines += ["---", "", "# Federated multimodal projector", "",
              f"Written by the {writer} beside the exported projector: what the {writer} knows of the run. "
              f"A missing fact reads \"{NOT_RECORDED}\".", ""]

    lines += ["## Frozen models", "",
              f"- vision tower: `{_v(facts.get('vision_tower'))}`",
              f"- language model: `{_v(facts.get('llm'))}`",
              *([f"- as named by: {facts['models_source']}"] if facts.get("models_source") else []),
              "", "Only the projector between them was trained; both stay frozen.", ""]

    shapes = facts.get("projector_shapes") or {}
    lines += ["## Projector", "", f"- projector kind: `{_v(facts.get('projector_kind'))}`",
              "- projector shapes: " + ("; ".join(f"`{k}` {' x '.join(str(int(d)) for d in s)}"
                                                 for k, s in shapes.items()) or NOT_RECORDED),
              "- files: " + (", ".join(f"`{f}`" for f in facts.get("files") or []) or NOT_RECORDED), ""]

    data = facts.get("data")
    lines += ["## Data", ""]
    if isinstance(data, Mapping) and data:
        lines += [f"- records, {s}: {n}" for s, n in data.items()]
    else:
        lines.append(f"- records: {_v(data)}")
    lines.append("")

    rounds = facts.get("rounds") or {}
    silos = facts.get("silos")
    lines += ["## Training", "",
              f"- rounds done: {_v(rounds.get('done'))}, planned: {_v(rounds.get('planned'))}"]
    if "included" in rounds:
        lines.append(f"- rounds this silo's update was summed into: {_v(rounds.get('included'))}")
    lines += [f"- silos: {_v(silos)}",
              f"- secure-sum scheme: `{_v(facts.get('scheme'))}`",
              f"- strategy: `{_v(facts.get('strategy'))}`",
              f"- strategy options: {_v(facts.get('strategy_options'))}"]
    surv = facts.get("survivors")
    lines.append(f"- survivors per round: {'' if isinstance(surv, Mapping) and surv else _v(surv)}".rstrip())
    if isinstance(surv, Mapping) and surv:
        lines += ["", "| round | silos summed |", "|---|---|"]
        lines += [f"| {r} | {', '.join(s) or 'none'} |" for r, s in surv.items()]
    lines.append("")

    lines += ["## Privacy (ε, δ) per silo", ""]
    if privacy:
        lines += ["| silo | ε | δ | source |", "|---|---|---|---|"]
        for silo, p in privacy.items():
            p = p if isinstance(p, Mapping) else {}
            lines.append(f"| {silo} | {_v(p.get('epsilon'))} | {_v(p.get('delta'))} | {_v(p.get('source'))} |")
    else:
        lines.append(f"- (ε, δ): {NOT_RECORDED}")
    lines.append("")

    head = facts.get("ledger_head")
    index, _, digest = head.partition(":") if isinstance(head, str) else ("", "", "")
    lines += ["## Ledger and verification", "",
              f"- ledger: `{_v(facts.get('ledger'))}`",
              f"- final head: index {index}, digest `{digest}` (`{head}`, as `audit verify` prints it)" if digest
              else f"- final head: {NOT_RECORDED}"]
    witnessed = facts.get("witnessed")
    if isinstance(witnessed, Mapping) and witnessed:
        for node, h in witnessed.items():
            i, _, d = str(h).partition(":")
            lines.append(f"- witnessed head of {node}: index {i}, digest `{d}`")
    else:
        lines.append(f"- witnessed heads: {_v(witnessed)}")
    lines += ["", "Verify with:", "", "```", _v(facts.get("verify_command")), "```", "",
              "It checks the ledger's hash chain, its signatures, the heads its peer witnessed and that no "
              "entry went unwitnessed (the closing receipt); "
              "the head it prints must match the one above.", ""]
    return "\n".join(lines)


def write_card(directory: str | os.PathLike, facts: Mapping[str, Any]) -> Path:
    """Write ``README.md`` into ``directory``, atomically, mode 0644."""
    return atomic_write_text(Path(directory) / CARD_NAME, render_card(facts), CARD_MODE)
