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


def test_privacy_on_and_nothing_else_gets_the_measured_dp_schedule(tmp_path):
    """issue 27 item 4: a silo.toml with privacy on and [train] silent trained batch 32 for one pass
    (noise/clip on the mean gradient in the tens: nothing learned); it now gets the recipe, and keys
    the file sets are kept."""
    from fedalign.protocol.config.silo import DP_TRAIN_DEFAULTS, load_silo_config
    from fedalign.silo.privacy.plan import NOISE_TO_CLIP_WARN, plan_dp
    from fedalign.silo.session import train_settings

    p = tmp_path / "silo.toml"
    p.write_text("[privacy]\nenabled = true\n")
    cfg = load_silo_config(p)
    t = cfg.train
    assert (t.batch_size, t.physical_batch_size, t.lr, t.local_epochs) == (256, 128, 3e-3, 4.0)
    steps_for = train_settings(cfg).steps_for
    n_params = 2 * 1024 * 1024  # a projector of about a million weights per layer
    plan = plan_dp(8.0, 1e-5, shard_sizes=[cfg.data.shard_size], batch_size=t.batch_size, steps_for=steps_for,
                   max_grad_norm=1.0, n_params=n_params)
    assert plan.noise_to_clip < NOISE_TO_CLIP_WARN
    # and the plain defaults under DP would have been past the warning: what the default used to be
    old = plan_dp(8.0, 1e-5, shard_sizes=[cfg.data.shard_size], batch_size=32, steps_for=lambda n: n // 32,
                  max_grad_norm=1.0, n_params=n_params)
    assert old.noise_to_clip > NOISE_TO_CLIP_WARN
    # a file that sets any schedule key owns its schedule (nothing of the recipe is mixed in: a
    # recipe's 4 passes under a file's fixed σ once broke examples/federation's budget)
    p.write_text("[privacy]\nenabled = true\n[train]\nbatch_size = 64\n")
    t = load_silo_config(p).train
    assert t.batch_size == 64 and t.lr == 2e-3 and t.local_epochs == 1.0 and t.lr != DP_TRAIN_DEFAULTS["lr"]
    p.write_text("[privacy]\nenabled = true\n[train]\nlocal_steps = 3\nrounds = 2\n")
    assert load_silo_config(p).train.batch_size == 32
    p.write_text("[train]\nrounds = 2\n")
    assert load_silo_config(p).train.batch_size == 32
