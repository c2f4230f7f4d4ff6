"""The projector room: one layout, one initialisation and one shape comparison for every party."""

from __future__ import annotations

import pytest
import torch

from fedalign.aggregator.app import fresh_projector
from fedalign.projector import PROJECTOR_KINDS, init_projector, layout_mismatch, projector_kind, projector_shapes
from fedalign.protocol.errors import ConfigError
from fedalign.silo.model import build_projector


@pytest.mark.parametrize("kind", PROJECTOR_KINDS)
def test_aggregator_theta0_is_the_silo_module_for_the_same_seed(kind):
    agg = fresh_projector(kind, 12, 20, seed=7)
    silo = build_projector(kind, 12, 20, generator=torch.Generator().manual_seed(7)).state_dict()
    assert sorted(agg) == sorted(silo)
    for k in agg:
        assert torch.equal(agg[k], silo[k]), k
    other = fresh_projector(kind, 12, 20, seed=8)
    assert not torch.equal(agg["0.weight"], other["0.weight"])


@pytest.mark.parametrize("kind", PROJECTOR_KINDS)
def test_shapes_name_what_init_makes_and_what_the_key_layouts_recognise(kind):
    params = init_projector(kind, 6, 10, generator=torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape) for k, v in params.items()} == projector_shapes(kind, 6, 10)
    assert projector_kind(params) == kind
    bound = 6 ** -0.5  # nn.Linear's: ±1/√fan_in
    assert params["0.weight"].abs().max() <= bound and params["0.weight"].abs().max() > 0.5 * bound


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(ConfigError, match="mlp2x_gelu"):
        projector_shapes("mlp3x_relu", 6, 10)
    with pytest.raises(ConfigError, match="mlp2x_gelu"):
        build_projector("mlp3x_relu", 6, 10)


def test_layout_mismatch_reports_the_first_matrix_then_absent_keys():
    ours = projector_shapes("mlp2x_gelu", 6, 10)
    assert layout_mismatch(ours, {k: list(v) for k, v in ours.items()}) is None
    wider = projector_shapes("mlp2x_gelu", 8, 10)
    assert layout_mismatch(ours, wider) == ("0.weight", "10x6", "10x8")
    bigger = projector_shapes("mlp2x_gelu", 6, 12)  # every tensor differs: a matrix is named, not a bias
    assert layout_mismatch(ours, bigger) == ("0.weight", "10x6", "12x6")
    assert layout_mismatch(ours, projector_shapes("linear", 6, 10)) == ("2.weight", "10x10", "absent")
    assert layout_mismatch(projector_shapes("linear", 6, 10), ours) == ("2.weight", "absent", "10x10")
