"""silo.toml: defaults, overrides, relative paths, and errors that name the file and field."""

import pytest

from fedalign.protocol.config import apply_overrides, parse_override
from fedalign.protocol.config.silo import load_silo_config
from fedalign.protocol.errors import ConfigError


def test_defaults_run_the_embedded_world():
    c = load_silo_config(None)
    assert c.data.source == "world" and c.model.vision_tower == "embedded" and not c.privacy.enabled


def test_file_relative_paths_and_overrides(tmp_path):
    p = tmp_path / "silo.toml"
    p.write_text('[data]\nsource = "files"\ntrain = "d/train.jsonl"\n[privacy]\nenabled = true\n')
    c = load_silo_config(p, {"privacy.epsilon": 2.5, "data.world.alpha": None})
    assert c.resolve(c.data.train) == tmp_path / "d" / "train.jsonl"
    assert c.privacy.epsilon == 2.5 and c.data.world.alpha == 0.1
    assert c.out_dir == tmp_path / "silo-out" and c.state_dir == tmp_path / "silo-out" / "state"


@pytest.mark.parametrize("text,needles", [
    ("[train]\nbatch_size = 0\n", ["silo.toml", "train.batch_size", "greater than or equal to 1"]),
    ("[privacy]\nepsilonn = 1\n", ["privacy.epsilonn", "Extra inputs"]),
    ('[data]\nsource = "files"\n', ["data", "needs data.train"]),
    ("[data\n", ["not valid TOML"]),
    ('[privacy]\naccountant = "gdp"\n', ["privacy.accountant", "'rdp' or 'prv'"]),
])
def test_errors_name_file_and_field(tmp_path, text, needles):
    p = tmp_path / "silo.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_silo_config(p)
    for n in needles:
        assert n in str(e.value)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_silo_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("novalue")
    assert parse_override("a.b=3") == ("a.b", 3) and parse_override("a.b=x y") == ("a.b", "x y")
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, {"a.b": 2})
