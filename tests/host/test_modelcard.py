"""The model card beside every exported projector (issue 26, item 8): fedalign.host.modelcard."""

from __future__ import annotations

import stat

from fedalign.host.modelcard import NOT_RECORDED, render_card, write_card

FACTS = {
    "writer": "aggregator",
    "vision_tower": "openai/clip-vit-large-patch14-336", "llm": "lmsys/vicuna-7b-v1.5",
    "projector_kind": "mlp2x_gelu", "projector_shapes": {"0.weight": [4096, 1024], "2.weight": [4096, 4096]},
    "files": ["final_projector.safetensors"],
    "data": "not known to the aggregator: it learns only sums",
    "rounds": {"done": 3, "planned": 4},
    "silos": ["hospital-a", "hospital-b"], "survivors": {0: ["hospital-a", "hospital-b"], 1: ["hospital-a"]},
    "scheme": "secagg", "strategy": "fedcmp", "strategy_options": {"reliability": "none"},
    "privacy": {"hospital-a": {"epsilon": 1.25, "delta": None, "source": "reported by hospital-a, round 1"}},
    "ledger": "aggregator-out/ledger.jsonl", "ledger_head": "7:" + "ab" * 32, "witnessed": {"hospital-a": "3:" + "cd" * 32},
    "verify_command": "aggregator audit verify --config aggregator.toml",
}


def _front(card: str) -> dict[str, list[str] | str]:
    assert card.startswith("---\n")
    front, _, body = card[4:].partition("\n---\n")
    assert body.strip(), "a body follows the front matter"
    out: dict[str, list[str] | str] = {}
    key = ""
    for line in front.splitlines():
        if line.startswith("- "):
            out.setdefault(key, [])
            out[key].append(line[2:].strip('"'))  # type: ignore[union-attr]
        else:
            key, _, value = line.partition(":")
            if value.strip():
                out[key] = value.strip()
    return out


def test_render_card_names_every_fact():
    card = render_card(FACTS)
    front = _front(card)
    assert front["library_name"] == "fedalign"
    assert "fedalign" in front["tags"] and "differential-privacy" in front["tags"]
    assert front["base_model"] == ["openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5"]
    for needle in ("vision tower: `openai/clip-vit-large-patch14-336`", "language model: `lmsys/vicuna-7b-v1.5`",
                   "projector kind: `mlp2x_gelu`", "`0.weight` 4096 x 1024", "`final_projector.safetensors`",
                   "records: not known to the aggregator: it learns only sums", "rounds done: 3, planned: 4",
                   "silos: hospital-a, hospital-b", "| 1 | hospital-a |", "secure-sum scheme: `secagg`",
                   "strategy: `fedcmp`", "strategy options: reliability=none",
                   f"| hospital-a | 1.25 | {NOT_RECORDED} | reported by hospital-a, round 1 |",
                   "`aggregator-out/ledger.jsonl`", f"final head: index 7, digest `{'ab' * 32}`",
                   f"witnessed head of hospital-a: index 3, digest `{'cd' * 32}`",
                   "aggregator audit verify --config aggregator.toml"):
        assert needle in card, needle
    assert NOT_RECORDED not in card.replace(f"| {NOT_RECORDED} |", "").replace(f'reads "{NOT_RECORDED}"', "")


def test_missing_facts_read_not_recorded():
    card = render_card({})
    assert "base_model" not in _front(card) and "differential-privacy" not in card
    for label in ("vision tower", "language model", "projector kind", "projector shapes", "files", "records",
                  "silos", "secure-sum scheme", "strategy", "strategy options", "survivors per round", "(ε, δ)",
                  "ledger", "final head", "witnessed heads"):
        assert f"- {label}: {NOT_RECORDED}" in card or f"- {label}: `{NOT_RECORDED}`" in card, label
    assert f"rounds done: {NOT_RECORDED}, planned: {NOT_RECORDED}" in card
    assert f"```\n{NOT_RECORDED}\n```" in card  # the verify command


def test_local_paths_are_not_base_models(tmp_path):
    (tmp_path / "org").mkdir()
    card = render_card({"vision_tower": str(tmp_path / "vit"), "llm": "embedded"})
    assert "base_model" not in _front(card)


def test_write_card_is_0644_and_atomic(tmp_path):
    p = write_card(tmp_path / "out", FACTS)
    assert p == tmp_path / "out" / "README.md" and p.read_text() == render_card(FACTS)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert [q.name for q in p.parent.iterdir()] == ["README.md"]  # no temp file left


def test_aggregator_card_from_its_history_and_ledger(tmp_path):
    """aggregator serve's card: each silo's reported ε (history = the ledger's round_committed), record
    counts "not known to the aggregator", the ledger's final head and the peer heads it witnessed."""
    from types import SimpleNamespace

    import torch

    from fedalign.aggregator.app import write_aggregator_card
    from fedalign.compliance.audit import ledger_head
    from fedalign.compliance.entries import LedgerHead
    from fedalign.compliance.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append("run_start", {"x": 1}, now=1.0)
    ledger.record_witness("hospital-a", LedgerHead(7, "ab" * 32), now=2.0)
    ledger.append("round_committed", {"round": 0}, now=3.0)
    cfg = SimpleNamespace(init=SimpleNamespace(params=None), run=SimpleNamespace(rounds=3),
                          strategy=SimpleNamespace(name="fedcmp"), resolve=lambda p: p)
    params = {"0.weight": torch.zeros(8, 4), "0.bias": torch.zeros(8), "2.weight": torch.zeros(8, 8),
              "2.bias": torch.zeros(8)}
    history = [{"round": 0, "survivors": ["hospital-a", "hospital-b"], "epsilon": {"hospital-a": 1.25, "hospital-b": 0.5}},
               {"round": 1, "survivors": ["hospital-a"], "epsilon": {"hospital-a": 2.5}}]
    path = write_aggregator_card(cfg, tmp_path / "aggregator.toml", tmp_path, params, history, scheme="secagg",
                                 strategy_options={"beta": 0.5}, declared={})
    assert path == tmp_path / "README.md" and stat.S_IMODE(path.stat().st_mode) == 0o644
    card = path.read_text()
    index, digest = ledger_head(tmp_path / "ledger.jsonl")
    for needle in ("mlp2x_gelu", "`0.weight` 8 x 4", "`final_projector.safetensors`",
                   "records, hospital-b: not known to the aggregator: it learns only sums", "rounds done: 2, planned: 3",
                   "silos: hospital-a, hospital-b", "| 0 | hospital-a, hospital-b |", "| 1 | hospital-a |",
                   "`secagg`", "`fedcmp`", "strategy options: beta=0.5",
                   f"| hospital-a | 2.5 | {NOT_RECORDED} | reported by hospital-a, round 1 |",
                   "| hospital-b | 0.5 |", f"final head: index {index}, digest `{digest}`",
                   f"witnessed head of hospital-a: index 7, digest `{'ab' * 32}`",
                   f"aggregator audit verify --config aggregator.toml   # in {tmp_path.resolve()}",
                   f"vision tower: `{NOT_RECORDED}`"):
        assert needle in card, needle
    declared = {"hospital-a": ("org/vit", "org/lm"), "hospital-b": ("org/vit", "org/lm")}
    card = write_aggregator_card(cfg, tmp_path / "aggregator.toml", tmp_path, params, history, scheme="secagg",
                                 strategy_options={}, declared=declared).read_text()
    assert "vision tower: `org/vit`" in card and "language model: `org/lm`" in card
    assert "as named by: declared by hospital-a, hospital-b at join" in card and '- "org/lm"' in card
