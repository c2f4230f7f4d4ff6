"""A silo pins the federated strategy it accepts: silo.toml's ``[strategy]`` (schema and startup
checks), the site policy's ``[strategy]`` rules, the pin built from a config, every shipped
example's silo.toml against its aggregator.toml, and what ``pin_violations`` refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedalign.fedcmp.pin import StrategyPin, pin_violations
from fedalign.fedcmp.strategies import make_strategy, strategy_options
from fedalign.protocol.config.aggregator import load_aggregator_config
from fedalign.protocol.config.policy import SitePolicy, load_site_policy
from fedalign.protocol.config.silo import SiloConfig, load_silo_config
from fedalign.protocol.errors import ConfigError
from fedalign.compliance.policy import check_silo_config
from fedalign.silo.federation import strategy_pin

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str, name: str = "silo.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_silo_config(_write(tmp_path, text))
    msg = str(e.value)
    assert "\n" not in msg, msg  # one line
    return msg


# ----------------------------------------------------------------------------- silo.toml schema

def test_the_section_defaults_pin_fedcmp_with_a_free_seed(tmp_path):
    cfg = load_silo_config(None)
    s = cfg.strategy
    assert (s.name, s.options, s.ranges, s.free, s.allow_reliability_under_dp) == ("fedcmp", {}, {}, ["seed"], False)
    cfg = load_silo_config(_write(tmp_path, '[strategy]\nname = "fedavgm-b0.5"\nranges = { kappa = [0.01, 1] }\n'
                                            'free = []\nallow_reliability_under_dp = true\n'))
    assert cfg.strategy.name == "fedavgm-b0.5" and cfg.strategy.ranges == {"kappa": (0.01, 1.0)}
    assert cfg.strategy.free == [] and cfg.strategy.allow_reliability_under_dp is True


def test_a_range_with_min_over_max_is_one_line_naming_strategy_ranges(tmp_path):
    msg = _config_error(tmp_path, "[strategy]\nranges = { rank = [32, 8] }\n")
    assert "strategy.ranges" in msg and "rank = [32, 8]: min 32 is over max 8" in msg


def test_a_range_that_is_not_finite_or_not_a_pair_is_refused(tmp_path):
    msg = _config_error(tmp_path, "[strategy]\nranges = { kappa = [0.0, inf] }\n")
    assert "strategy.ranges" in msg and "kappa" in msg and "finite" in msg
    msg = _config_error(tmp_path, "[strategy]\nranges = { kappa = [0.1] }\n")
    assert "strategy.ranges.kappa" in msg


def test_an_option_pinned_and_also_free_or_ranged_is_refused(tmp_path):
    msg = _config_error(tmp_path, "[strategy]\noptions = { seed = 3 }\n")  # free defaults to ["seed"]
    assert msg.count("strategy:") == 1 and "seed in both [strategy] options and free" in msg
    assert "set free = [] to pin seed" in msg
    load_silo_config(_write(tmp_path, "[strategy]\noptions = { seed = 3 }\nfree = []\n"))  # pinned alone: fine
    msg = _config_error(tmp_path, "[strategy]\noptions = { rank = 8 }\nranges = { rank = [4, 16] }\n")
    assert "rank in both [strategy] options and ranges" in msg
    msg = _config_error(tmp_path, '[strategy]\nranges = { kappa = [0.01, 1] }\nfree = ["kappa", "seed"]\n')
    assert "kappa in both [strategy] ranges and free" in msg


def test_an_unknown_strategy_field_is_refused(tmp_path):
    msg = _config_error(tmp_path, "[strategy]\nallow_reliability = true\n")
    assert "strategy.allow_reliability: Extra inputs are not permitted" in msg


# ----------------------------------------------------------------------------- the pin built from a config

def _cfg(**sections) -> SiloConfig:
    return SiloConfig.model_validate(sections)


def test_the_pin_is_built_from_the_config_with_dp_from_privacy():
    pin = strategy_pin(_cfg(strategy={"options": {"rank": 32}, "ranges": {"kappa": [0.01, 1.0]}}))
    assert pin == StrategyPin("fedcmp", {"rank": 32}, {"kappa": (0.01, 1.0)}, ("seed",), dp=False,
                              allow_reliability_under_dp=False)
    assert pin.expected_options()["reliability"] == "reference"  # Fed-CMP's non-DP default
    dp = strategy_pin(_cfg(privacy={"enabled": True}, strategy={"options": {"rank": 32}}))
    assert dp.dp is True and dp.expected_options()["reliability"] == "off"  # the DP default, as the aggregator's
    assert dp.expected_options() == strategy_options(make_strategy("fedcmp", dp=True, rank=32))
    allowed = strategy_pin(_cfg(privacy={"enabled": True}, strategy={
        "options": {"reliability": "reference"}, "allow_reliability_under_dp": True}))
    assert allowed.allow_reliability_under_dp and allowed.expected_options()["reliability"] == "reference"
    assert strategy_pin(_cfg(strategy={"name": "fedavg"})).expected_options() == {"server_lr": 1.0}  # free: moot


@pytest.mark.parametrize("section, words", [
    ({"name": "fedsgd"}, ["[strategy] name = 'fedsgd' is not a strategy", "expected one of"]),
    ({"options": {"rnak": 8}}, ["[strategy]", "rnak"]),
    ({"options": {"rank": 0}}, ["[strategy]", "fedcmp.rank"]),
    ({"name": "fedavg", "options": {"rank": 8}}, ["[strategy]", "unknown option(s) ['rank']; it takes ['server_lr']"]),
    ({"ranges": {"kapa": [0.0, 1.0]}}, ["[strategy] ranges", "'kapa' is not an option of strategy 'fedcmp'"]),
    ({"ranges": {"reliability": [0.0, 1.0]}}, ["[strategy] ranges", "'reliability'", "is not a number"]),
    ({"free": ["sead"]}, ["[strategy] free", "'sead' is not an option"]),
])
def test_a_strategy_the_silo_cannot_run_is_a_config_error_naming_strategy(section, words):
    with pytest.raises(ConfigError) as e:
        strategy_pin(_cfg(strategy=section))
    for w in words:
        assert w in str(e.value), str(e.value)


def test_reliability_under_dp_the_silo_would_refuse_itself_fails_at_startup():
    cfg = _cfg(privacy={"enabled": True}, strategy={"options": {"reliability": "reference"}})
    with pytest.raises(ConfigError, match=r"\[strategy\] options: reliability = 'reference' under DP.*"
                                          r"allow_reliability_under_dp = true"):
        strategy_pin(cfg)
    strategy_pin(_cfg(strategy={"options": {"reliability": "reference"}}))  # no DP: fine


def test_federated_train_refuses_a_bad_strategy_before_loading_anything(monkeypatch, tmp_path):
    from fedalign.silo import federation

    def no_trainer(*a, **k):
        raise AssertionError("the trainer (data, models) was built")

    monkeypatch.setattr(federation, "build_trainer", no_trainer)
    cfg = _cfg(strategy={"options": {"rank": -1}}, output={"dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match=r"\[strategy\]"):
        federation.federated_train(cfg)
    assert not (tmp_path / "out").exists()


def test_run_federated_passes_the_pin_to_the_silo_policy(monkeypatch, tmp_path):
    """The plumbing: SiloPolicy(..., strategy=<this config's pin>), the trainer never built."""
    from fedalign.protocol.keys import write_keypair
    from fedalign.silo import federation
    from fedalign.silo.keys import keygen_silo

    keys = tmp_path / "keys"
    write_keypair(keys, "aggregator", role="aggregator")
    (tmp_path / "roster.toml").write_text(keygen_silo(keys, "hospital-a").roster_entry)
    cfg = load_silo_config(_write(tmp_path, f"""
[output]
dir = "out"
[privacy]
enabled = true
[federation]
aggregator = "tcp://127.0.0.1:1"
silo_id = "hospital-a"
aggregator_public_key = "keys/aggregator.key"
secret_key = "keys/hospital-a.key_secret"
identity_key = "keys/hospital-a.identity"
roster = "roster.toml"
[strategy]
options = {{ rank = 8 }}
ranges = {{ kappa = [0.01, 1.0] }}
"""))
    seen = {}

    class Stop(Exception):
        pass

    def policy(**kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(federation, "SiloPolicy", policy)
    with pytest.raises(Stop):
        federation.run_federated(cfg, trainer=object())
    assert seen["strategy"] == StrategyPin("fedcmp", {"rank": 8}, {"kappa": (0.01, 1.0)}, ("seed",), dp=True)
    assert seen["dp_enabled"] is True


# ----------------------------------------------------------------------------- the site policy's [strategy]

def test_policy_strategy_rules_default_to_any_strategy_and_no_reliability_under_dp(tmp_path):
    pol = SitePolicy()
    assert pol.strategy.names is None and pol.strategy.allow_reliability_under_dp is False
    p = _write(tmp_path, "[strategy]\nnames = []\n", "policy.toml")
    with pytest.raises(ConfigError, match=r"strategy\.names"):
        load_site_policy(p)
    p = _write(tmp_path, "[strategy]\nname = [\"fedcmp\"]\n", "policy.toml")
    with pytest.raises(ConfigError, match=r"strategy\.name: Extra inputs"):
        load_site_policy(p)


def _strategy_lines(cfg: SiloConfig, policy: SitePolicy, networked: bool = True) -> list[str]:
    loose = policy.model_copy(update={"privacy": policy.privacy.model_copy(update={"dp_required": False})})
    return [x for x in check_silo_config(cfg, loose, networked=networked) if x.startswith("strategy.")]


def test_the_policy_names_a_strategy_the_silo_may_not_pin():
    pol = SitePolicy.model_validate({"strategy": {"names": ["fedavg", "fedavgm-b0.5"]}})
    assert _strategy_lines(_cfg(), pol) == [
        "strategy.names: strategy.name = 'fedcmp' is not one of ['fedavg', 'fedavgm-b0.5']"]
    assert _strategy_lines(_cfg(strategy={"name": "fedavgm-b0.5"}), pol) == []
    assert _strategy_lines(_cfg(), SitePolicy()) == []  # names unset: any strategy
    assert _strategy_lines(_cfg(), pol, networked=False) == []  # a local run pins no strategy


def test_the_policy_forbids_reliability_under_dp_unless_it_allows_it():
    cfg = _cfg(strategy={"allow_reliability_under_dp": True})
    assert _strategy_lines(cfg, SitePolicy()) == [
        "strategy.allow_reliability_under_dp: strategy.allow_reliability_under_dp = true is not allowed"]
    assert _strategy_lines(cfg, SitePolicy.model_validate({"strategy": {"allow_reliability_under_dp": True}})) == []
    assert _strategy_lines(_cfg(), SitePolicy()) == []
    both = SitePolicy.model_validate({"strategy": {"names": ["fedavg"]}})
    assert [x.split(":")[0] for x in _strategy_lines(cfg, both)] == ["strategy.names",
                                                                     "strategy.allow_reliability_under_dp"]


def test_train_names_the_broken_strategy_clauses_before_loading_anything(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fedalign.host.cli_errors import EXIT_CODES
    from fedalign.silo import cli, federation

    def no_trainer(*a, **k):
        raise AssertionError("the trainer (data, models) was built")

    monkeypatch.setattr(federation, "build_trainer", no_trainer)
    _write(tmp_path, '[privacy]\ndp_required = false\n[strategy]\nnames = ["fedavg"]\n', "policy.toml")
    _write(tmp_path, f'[strategy]\nallow_reliability_under_dp = true\n[output]\ndir = "{tmp_path / "out"}"\n')
    r = CliRunner().invoke(cli.app, ["train", "--config", str(tmp_path / "silo.toml"),
                                     "--policy", str(tmp_path / "policy.toml")])
    assert r.exit_code == EXIT_CODES[ConfigError], r.output
    (line,) = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert "2 clause(s)" in line and "strategy.names" in line and "strategy.allow_reliability_under_dp" in line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- shipped examples

def _aggregator_options(agg_path: Path) -> tuple[str, dict]:
    sec = load_aggregator_config(agg_path).strategy
    return sec.name, strategy_options(make_strategy(sec.name, dp=sec.dp, **sec.options))


def _fill(template: Path, out: Path, **values) -> Path:
    """examples/quickstart/run.py's way: each ``{key}`` replaced, TOML's own braces left alone."""
    text = template.read_text()
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    assert not re.search(r"\{[a-z_]+\}", text), f"{template}: a placeholder this test does not fill"
    out.write_text(text)
    return out


def _example_pairs(tmp_path: Path) -> list[tuple[str, Path, Path]]:
    fed = ROOT / "examples" / "federation"
    pairs = [(s, fed / f"{s}.toml", fed / "aggregator.toml") for s in ("hospital-a", "hospital-b", "hospital-c")]
    qs = ROOT / "examples" / "quickstart"
    agg = _fill(qs / "aggregator.toml", tmp_path / "aggregator.toml", port=5555, rounds=2,
                peer_ledgers="\"hospital-a\" = \"hospital-a-out/state/ledger.jsonl\"")
    for i, s in enumerate(("hospital-a", "hospital-b", "hospital-c")):
        pairs.append((f"quickstart {s}", _fill(qs / "silo.toml", tmp_path / f"{s}.toml", port=5555, index=i, name=s,
                                               shard_size=512, samples_per_silo=1024, world="tiny"), agg))
    return pairs


def test_every_shipped_silo_pins_what_its_aggregator_sends(tmp_path):
    pairs = _example_pairs(tmp_path)
    assert len(pairs) == 6
    for label, silo_toml, agg_toml in pairs:
        pin = strategy_pin(load_silo_config(silo_toml))
        name, options = _aggregator_options(agg_toml)
        assert pin_violations(pin, name, options) == [], label


def test_the_federation_example_needs_its_reliability_permission(tmp_path):
    """examples/federation runs reliability "reference" under DP: without the silo's explicit
    allow_reliability_under_dp it would not start (and would refuse every RoundStart)."""
    text = (ROOT / "examples" / "federation" / "hospital-a.toml").read_text()
    assert "allow_reliability_under_dp = true" in text
    cfg = load_silo_config(_write(tmp_path, text.replace("allow_reliability_under_dp = true", "")))
    with pytest.raises(ConfigError, match="allow_reliability_under_dp"):
        strategy_pin(cfg)
    pin = StrategyPin(**{**strategy_pin(load_silo_config(ROOT / "examples/federation/hospital-a.toml")).__dict__,
                         "allow_reliability_under_dp": False})
    assert any("under DP" in p for p in pin_violations(pin, *_aggregator_options(
        ROOT / "examples" / "federation" / "aggregator.toml")))


def test_the_quickstart_policy_allows_its_silos_strategy(tmp_path):
    policy = load_site_policy(_fill(ROOT / "examples" / "quickstart" / "policy.toml", tmp_path / "policy.toml",
                                    aggregator_fingerprint="sha256:" + "a" * 64))
    assert policy.strategy.names == ["fedcmp"] and policy.strategy.allow_reliability_under_dp is False
    for label, silo_toml, _ in _example_pairs(tmp_path)[3:]:
        cfg = load_silo_config(silo_toml)
        assert check_silo_config(cfg, policy, networked=True, aggregator_fingerprint="sha256:" + "a" * 64) == [], label


@pytest.mark.parametrize("strategy, options", [("fedcmp", {"rank": 2}), ("fedavg", {}),
                                               ("fedcmp", {"rank": 2, "reliability": "consensus", "kappa": 1.0})])
def test_the_e2e_loopback_configs_pin_what_their_aggregator_sends(tmp_path, strategy, options):
    from fedalign.lab.loopback.federation import write_federation

    names = ["a", "b", "c"]
    write_federation(tmp_path, names, 1, strategy, options, train_deadline_s=1, step_deadline_s=1,
                     heartbeat_timeout_s=1, aggregator_timeout_s=1)
    agg = _aggregator_options(tmp_path / "aggregator.toml")
    for s in names:
        assert pin_violations(strategy_pin(load_silo_config(tmp_path / f"{s}.toml")), *agg) == [], s


# ----------------------------------------------------------------------------- pin_violations

PIN = StrategyPin("fedcmp", {"rank": 8}, {"kappa": (0.01, 1.0)}, ("seed",), dp=True)


def _sent(**changes) -> dict:
    return {**strategy_options(make_strategy("fedcmp", dp=True, rank=8)), **changes}


def test_the_pinned_options_pass_and_a_free_seed_is_accepted():
    assert pin_violations(PIN, "fedcmp", _sent()) == []
    assert pin_violations(PIN, "fedcmp", _sent(seed=12345)) == []
    assert pin_violations(PIN, "fedcmp", _sent(kappa=0.5)) == []  # inside the range
    no_free = StrategyPin("fedcmp", {"rank": 8}, dp=True)
    assert pin_violations(no_free, "fedcmp", _sent(seed=12345)) == [
        "strategy option seed = 12345, this silo pins 0 ([strategy] options)"]


def test_another_strategy_name_is_refused():
    (line,) = pin_violations(PIN, "fedavg", {})
    assert "'fedavg' is not this silo's pinned strategy 'fedcmp'" in line


def test_an_option_outside_its_range_or_off_its_pin_is_refused():
    (line,) = pin_violations(PIN, "fedcmp", _sent(kappa=5.0))
    assert line == "strategy option kappa = 5.0 is outside this silo's range [0.01, 1]"
    (line,) = pin_violations(PIN, "fedcmp", _sent(rank=2))
    assert line == "strategy option rank = 2, this silo pins 8 ([strategy] options)"
    assert len(pin_violations(PIN, "fedcmp", _sent(kappa=True))) == 1  # a bool is not a number in range


def test_reliability_under_dp_is_refused_unless_allowed():
    problems = pin_violations(PIN, "fedcmp", _sent(reliability="reference"))
    assert any("reliability 'reference' under DP" in p for p in problems), problems
    free_rel = StrategyPin("fedcmp", {"rank": 8}, free=("seed", "reliability"), dp=True)
    assert pin_violations(free_rel, "fedcmp", _sent(reliability="reference")) == [
        "reliability 'reference' under DP: this silo's policy does not allow it "
        "([strategy] allow_reliability_under_dp)"]
    allowed = StrategyPin("fedcmp", {"rank": 8, "reliability": "reference"}, free=("seed",), dp=True,
                          allow_reliability_under_dp=True)
    assert pin_violations(allowed, "fedcmp", _sent(reliability="reference")) == []


def test_a_missing_or_unknown_option_is_refused():
    sent = _sent()
    del sent["beta"]
    assert pin_violations(PIN, "fedcmp", sent) == ["strategy option 'beta' is missing (this silo pins 0.5)"]
    assert pin_violations(PIN, "fedcmp", _sent(gamma=1)) == ["strategy option 'gamma' is unknown to 'fedcmp'"]
    assert pin_violations(PIN, "fedcmp", "rank=8") == ["strategy options must be a table, got str"]
