"""Site policies: a config breaking several clauses is refused with every clause named."""

from __future__ import annotations

import pytest

from fedalign.protocol.config.aggregator import AggregatorConfig
from fedalign.protocol.config.policy import AggregatorSitePolicy, SitePolicy, load_site_policy
from fedalign.protocol.config.silo import SiloConfig
from fedalign.protocol.errors import ConfigError
from fedalign.compliance.policy import (PolicyViolation, check_aggregator_config, check_silo_config, policy_digest,
                                      raise_if_violated, sum_violations)

STRICT = SitePolicy.model_validate({
    "secure_sum": {"schemes": ["secagg"], "min_silos": 4},
    "privacy": {"dp_required": True, "max_epsilon": 4.0, "max_delta": 1e-6, "max_epsilon_per_pass": 2.0},
    "run": {"max_rounds": 10, "max_passes": 1},
    "aggregator": {"key_fingerprints": ["sha256:" + "a" * 64]},
})


def _cfg(**sections) -> SiloConfig:
    return SiloConfig.model_validate(sections)


def test_a_compliant_config_passes():
    cfg = _cfg(privacy={"enabled": True, "epsilon": 3.0, "delta": 1e-6}, federation={"min_silos": 5})
    assert check_silo_config(cfg, STRICT, networked=True, epsilon_of_pass=lambda: 1.0,
                             aggregator_fingerprint="sha256:" + "a" * 64) == []


def test_every_broken_clause_is_named_in_one_error():
    cfg = _cfg(privacy={"enabled": False, "epsilon": 9.0, "delta": 1e-5}, data={"max_passes": 3},
               federation={"scheme": "ckks", "min_silos": 3, "allow_insecure_plaintext": True})
    problems = check_silo_config(cfg, STRICT, networked=True, epsilon_of_pass=lambda: 5.0,
                                 aggregator_fingerprint="sha256:" + "b" * 64)
    clauses = [p.split(":")[0] for p in problems]
    assert clauses == ["secure_sum.schemes", "secure_sum.min_silos", "secure_sum.allow_insecure_plaintext",
                       "privacy.dp_required", "privacy.max_epsilon", "privacy.max_delta", "run.max_passes",
                       "aggregator.key_fingerprints"]
    with pytest.raises(PolicyViolation) as e:
        raise_if_violated(problems, "policy.toml")
    assert isinstance(e.value, ConfigError) and "8 clause(s)" in str(e.value)
    for c in clauses:
        assert c in str(e.value)


def test_epsilon_per_pass_and_local_rounds():
    cfg = _cfg(privacy={"enabled": True, "epsilon": 3.0, "delta": 1e-6}, train={"rounds": 20})
    problems = check_silo_config(cfg, STRICT, networked=False, epsilon_of_pass=lambda: 2.5)
    assert [p.split(":")[0] for p in problems] == ["privacy.max_epsilon_per_pass", "run.max_rounds"]


def test_run_time_requests_against_the_policy():
    assert sum_violations(STRICT, scheme="ckks", participants=("a", "b", "c", "d"), threshold=4) == [
        "policy secure_sum.schemes ['secagg'] does not allow scheme ckks"]
    assert "3 participants" in sum_violations(STRICT, scheme="secagg", participants=("a", "b", "c"), threshold=2)[0]
    assert sum_violations(STRICT, scheme="secagg", participants=("a", "b", "c", "d"), threshold=4) == []


def test_aggregator_policy():
    pol = AggregatorSitePolicy.model_validate({"secure_sum": {"schemes": ["secagg"], "min_silos": 3},
                                               "silos": {"allowed": ["a", "b", "c"]}})
    cfg = AggregatorConfig.model_validate({"init": {"d_vision": 4, "d_model": 4}, "run": {"min_silos": 2},
                                           "secure_sum": {"scheme": "ckks"}})
    problems = check_aggregator_config(cfg, pol, ["a", "b", "mallory"])
    assert [p.split(":")[0] for p in problems] == ["secure_sum.schemes", "secure_sum.min_silos", "silos.allowed"]


def test_policy_file_is_validated_and_hashed(tmp_path):
    p = tmp_path / "policy.toml"
    p.write_text('[secure_sum]\nschemes = ["plain"]\n')
    with pytest.raises(ConfigError, match="allow_insecure_plaintext"):
        load_site_policy(p)
    p.write_text('[privacy]\nmax_epsilon = 4.0\nmax_epsilonn = 1\n')
    with pytest.raises(ConfigError, match="max_epsilonn"):
        load_site_policy(p)
    p.write_text('[privacy]\nmax_epsilon = 4.0\n')
    a = policy_digest(load_site_policy(p))
    p.write_text('[privacy]\nmax_epsilon = 4.5\n')
    assert a.startswith("sha256:") and a != policy_digest(load_site_policy(p))
