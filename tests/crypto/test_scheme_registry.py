"""Adding a secure-sum scheme touches one table (crypto/schemes.py): a toy scheme registered here
runs a whole federation, and configs, the wire, the silo's pin, the site policy and the audit
report accept it, with no other change. Before the table, a scheme was named in 8 places in 7
files (two if/else chains, an enum, three config Literals, the audit's dict, the phase rule)."""

from __future__ import annotations


import numpy as np
import pytest

from fedalign.crypto import SecureSumConfig, SecureSumUsageError
from fedalign.crypto.plain import PlainAggregator, PlainSilo
from fedalign.crypto.schemes import SCHEMES, SchemeSpec, register_scheme, scheme_spec


TOY = "toy-clear"


class ToySilo(PlainSilo):
    """A silo side of its own (here the sum in the clear, as a new scheme's first sketch might be)."""


class ToyAggregator(PlainAggregator):
    pass


@pytest.fixture
def toy(monkeypatch):
    """The toy scheme in the table for one test (the table is restored afterwards)."""
    monkeypatch.setattr("fedalign.crypto.schemes.SCHEMES", dict(SCHEMES))
    spec = register_scheme(SchemeSpec(TOY, lambda: (ToySilo, ToyAggregator), insecure=True,
                                      threat_model="toy-clear (a test's scheme): the aggregator sees every input."))
    return spec


def test_an_unregistered_scheme_is_refused_everywhere():
    from fedalign.protocol.config import validate_config  # noqa: F401 - the config package loads
    from fedalign.protocol.config.aggregator import SecureSumSection

    with pytest.raises(SecureSumUsageError, match=r"'toy-clear' is not one of"):
        SecureSumConfig(mode=TOY, threshold=2, clip=1.0, allow_insecure_plaintext=True)
    with pytest.raises(Exception, match="is not a secure-sum scheme"):
        SecureSumSection(scheme=TOY)
    with pytest.raises(SecureSumUsageError):
        register_scheme(SchemeSpec("secagg", lambda: (ToySilo, ToyAggregator), threat_model="again"))


def test_a_registered_toy_scheme_runs_a_federation_and_reaches_every_reader(toy, tmp_path):
    from fedalign.lab.toy_federation import run_federation

    from fedalign.compliance.audit import threat_model
    from fedalign.protocol.config.aggregator import SecureSumSection
    from fedalign.protocol.config.policy import SecureSumRules
    from fedalign.protocol.messages import SumStart

    assert scheme_spec(TOY) is toy
    assert SecureSumSection(scheme=TOY).scheme == TOY and SecureSumRules(schemes=[TOY]).schemes == [TOY]
    assert SumStart(0, 0, 1, TOY, ("a", "b", "c"), 2, 1.0, 0, 8192).scheme == TOY
    assert threat_model(TOY).startswith("toy-clear")
    # a whole federation over it: the aggregator and the silos agree, and the sums are the inputs' sums
    res = run_federation(3, rounds=1, strategy="fedavg", scheme=TOY,
                         policy_overrides={"allow_insecure_plaintext": True},
                         silo_policy={"allow_insecure_plaintext": True, "scheme": TOY})
    assert res.error is None, res.error
    assert res.state.history[0]["survivors"] == ["silo-0", "silo-1", "silo-2"]
    ph, sums = res.strategy.sums[0]
    for name, got in sums.tensors.items():
        want = sum(res.contributions[(0, 0, s)][name] for s in ("silo-0", "silo-1", "silo-2"))
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-6, atol=1e-9)
    # insecure in the table: refused without the explicit flag, as plain is
    with pytest.raises(Exception, match="allow_insecure_plaintext"):
        SecureSumConfig(mode=TOY, threshold=2, clip=1.0, allow_insecure_plaintext=False)
