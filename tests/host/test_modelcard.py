"""Model cards beside exports (issue 26, item 8): the aggregator's card says what it knows and
what it cannot (record counts: it learns only sums), with each silo's reported ε and its ledger head."""

import stat
from types import SimpleNamespace

import torch

from fedalign.aggregator.cli import write_aggregator_card
from fedalign.host.modelcard import render_card
from fedalign.protocol.ledger import Ledger, LedgerHead, read_ledger


def test_aggregator_card_names_every_fact(tmp_path):
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
    path = write_aggregator_card(cfg, tmp_path, params, history, scheme="secagg")
    assert path == tmp_path / "README.md" and stat.S_IMODE(path.stat().st_mode) == 0o600
    card = path.read_text()
    last = read_ledger(tmp_path / "ledger.jsonl")[-1]
    for needle in ("library_name: fedalign", "mlp2x_gelu", "`0.weight`: 8 x 4", "final_projector.safetensors",
                   "hospital-b: not known to the aggregator (it learns only sums)", "rounds: 2 of 3 planned",
                   "silos: 2", "| 0 | hospital-a, hospital-b |", "| 1 | hospital-a |", "`secagg`", "`fedcmp`",
                   "| hospital-a | 2.5 |", "| hospital-b | 0.5 |", "UpdateReady",
                   f"final head: index {last.seq}, digest `{last.digest}`",
                   f"witnessed head of hospital-a: index 7, digest `{'ab' * 32}`",
                   "aggregator audit verify --config aggregator.toml", "not known to the aggregator (init.params"):
        assert needle in card, needle


def test_base_model_only_for_hub_ids():
    card = render_card({"writer": "silo a", "vision_tower": "openai/clip-vit-large-patch14-336",
                        "llm": "/nonexistent/local/llama"})
    front = card.split("\n---\n", 1)[0]
    assert 'base_model:\n- "openai/clip-vit-large-patch14-336"' in front and "llama" not in front
