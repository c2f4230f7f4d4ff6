"""The configs the docs show are valid and complete where an operator copies them from."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from fedalign.protocol.config.aggregator import load_aggregator_config
from fedalign.protocol.config.silo import DataSection, FederationSection, load_silo_config

ROOT = Path(__file__).resolve().parents[1]


def _toml_blocks(doc: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)


def test_the_silo_toml_in_docs_silo_md_is_valid_and_shows_every_data_field(tmp_path):
    block = next(b for b in _toml_blocks(ROOT / "docs" / "silo.md") if "[data]" in b)
    p = tmp_path / "silo.toml"
    p.write_text(block)
    load_silo_config(p)  # every field validates
    data = tomllib.loads(block)["data"]
    assert set(DataSection.model_fields) <= set(data), set(DataSection.model_fields) - set(data)


def test_the_federation_example_configs_are_valid_and_name_the_waits(tmp_path):
    ex = ROOT / "examples" / "federation"
    agg = load_aggregator_config(ex / "aggregator.toml")
    assert agg.init.params == Path("init_projector.safetensors")
    for s in ("hospital-a", "hospital-b", "hospital-c"):
        cfg = load_silo_config(ex / f"{s}.toml")
        assert cfg.federation.silo_id == s and cfg.data.world.silo_index == "abc".index(s[-1])
    runtime = (ROOT / "docs" / "runtime.md").read_text()
    for field in ("wait_report_s", "aggregator_timeout_s"):
        assert field in FederationSection.model_fields and field in runtime
    assert "report_interval_s" in runtime
