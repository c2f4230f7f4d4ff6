"""Fed-CMP math: the invariants of docs/design.md §4, each a test that can fail."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedalign.fedcmp import core as fm
from fedalign.fedcmp.strategies import FedAvg, FedAvgM, FedCMP, FedCMPConfig
from fedalign.fedcmp.strategy import Sums, payload_numbers
from fedalign.lab.engine import init_state, run_round
from fedalign.lab.sums import plain_sum_insecure
from fedalign.lab.toy import make_toy


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rounds(strategy, prob, rounds, n_silos, seed=0, weights=None, order=None):
    """Run ``rounds`` rounds; yield (state, report) after each. ``order`` permutes the silos."""
    order = list(range(n_silos)) if order is None else order
    weights = weights or [1.0] * n_silos
    st_ = init_state(strategy, prob.init_params(_gen(seed)), n_silos)
    for r in range(rounds):
        # each silo's local SGD draws from its own generator so permuting silos permutes updates
        deltas = [prob.local_update(st_.params, k, 3, 0.05, 16, _gen(1000 * r + k)) for k in order]
        st_, rep = run_round(strategy, st_, deltas, [weights[k] for k in order], plain_sum_insecure)
        yield st_, rep


# --------------------------------------------------------------------------- orth


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), r=st.integers(1, 40), seed=st.integers(0, 2**31 - 1), f64=st.booleans())
def test_orth_is_orthonormal_with_positive_diagonal_and_spans_input(m, r, seed, f64):
    r = min(m, r)
    dt = torch.float64 if f64 else torch.float32
    x = torch.randn(m, r, generator=_gen(seed), dtype=dt)
    q = fm.orth(x)
    assert q.dtype == dt and q.shape == (m, r)
    assert fm.orthogonality_error(q) < 1e-5
    r_mat = q.T.to(torch.float64) @ x.to(torch.float64)  # x = q R with R upper triangular
    assert torch.all(torch.diagonal(r_mat) > 0)
    assert torch.allclose(q.to(torch.float64) @ r_mat, x.to(torch.float64), atol=1e-4)


def test_orth_rank_deficient_input_still_orthonormal():
    x = torch.zeros(6, 3)
    x[:, 0] = 1.0
    assert fm.orthogonality_error(fm.orth(x)) < 1e-5


def test_orth_rejects_wide_matrix():
    with pytest.raises(ValueError, match="tall"):
        fm.orth(torch.zeros(2, 3))


# --------------------------------------------------------------------------- invariants over rounds


@pytest.mark.parametrize("shape", [(12, 10), (8, 14)])
def test_basis_orthonormal_every_round(shape):
    prob = make_toy(m=shape[0], n=shape[1], n_silos=4, generator=_gen(3))
    strat = FedCMP(FedCMPConfig(rank=3, reliability="consensus", beta=0.5))
    assert strat.n_phases == 3
    for st_, rep in _rounds(strat, prob, 15, 4):
        assert 0.0 <= rep.metrics["mean_reliability"] <= 1.0
        assert rep.metrics["orth_error"] < 1e-5
        u = st_.public["weight/U_prev"]
        assert u.shape == (shape[0], 3) and fm.orthogonality_error(u) < 1e-5
        assert fm.orthogonality_error(st_.public["weight/Q"]) < 1e-5


@pytest.mark.parametrize("shape", [(12, 10), (8, 14)])
def test_full_rank_single_round_equals_fedavg_float32(shape):
    prob = make_toy(m=shape[0], n=shape[1], n_silos=4, generator=_gen(5))
    w = [0.3, 1.0, 0.7, 0.5]
    cmp_ = FedCMP(FedCMPConfig(rank=None, error_feedback=False, beta=0.0, reliability="off"))
    (a, _), = list(_rounds(cmp_, prob, 1, 4, weights=w))
    (b, _), = list(_rounds(FedAvg(), prob, 1, 4, weights=w))
    for n in a.params:
        assert torch.allclose(a.params[n], b.params[n], atol=1e-6), n


@pytest.mark.parametrize("shape", [(12, 10), (8, 14)])
def test_full_rank_equals_fedavg_over_rounds_float64(shape):
    prob = make_toy(m=shape[0], n=shape[1], n_silos=3, generator=_gen(6), dtype=torch.float64)
    cmp_ = FedCMP(FedCMPConfig(rank=None, error_feedback=False, beta=0.0, reliability="off"))
    for (a, _), (b, _) in zip(_rounds(cmp_, prob, 10, 3), _rounds(FedAvg(), prob, 10, 3)):
        for n in a.params:
            assert torch.allclose(a.params[n], b.params[n], atol=1e-10), (a.round, n)


def test_full_rank_opm_equals_heavy_ball_float64():
    # OPM projects the previous step onto span(U); with m ≤ n at full rank U is square, so the
    # projection is the identity. (With m > n, span(U) is the current sum's column space and
    # the projection drops the part of the previous step outside it: not heavy-ball.)
    prob = make_toy(m=7, n=9, n_silos=3, generator=_gen(7), dtype=torch.float64)
    cmp_ = FedCMP(FedCMPConfig(rank=None, error_feedback=False, beta=0.5, reliability="off"))
    for (a, _), (b, _) in zip(_rounds(cmp_, prob, 8, 3), _rounds(FedAvgM(beta=0.5), prob, 8, 3)):
        # m > n: U spans the column space of the summed update, which holds every step
        for n in a.params:
            assert torch.allclose(a.params[n], b.params[n], atol=1e-10), (a.round, n)


def test_low_rank_differs_from_fedavg():
    # The equivalence tests above must be able to fail: at low rank without EF they do.
    prob = make_toy(m=12, n=10, n_silos=3, generator=_gen(5))
    cmp_ = FedCMP(FedCMPConfig(rank=2, error_feedback=False, beta=0.0, reliability="off"))
    (a, _), = list(_rounds(cmp_, prob, 1, 3))
    (b, _), = list(_rounds(FedAvg(), prob, 1, 3))
    assert not torch.allclose(a.params["weight"], b.params["weight"], atol=1e-4)


@settings(max_examples=8, deadline=None)
@given(perm=st.permutations(list(range(4))), rel=st.sampled_from(["off", "blend", "consensus"]))
def test_silo_order_does_not_change_results(perm, rel):
    prob = make_toy(m=10, n=8, n_silos=4, generator=_gen(9))
    w = [0.2, 1.0, 0.6, 0.9]
    cfg = FedCMPConfig(rank=3, reliability=rel, beta=0.5, error_feedback=True)
    base = list(_rounds(FedCMP(cfg), prob, 4, 4, weights=w))
    perm_ = list(_rounds(FedCMP(cfg), prob, 4, 4, weights=w, order=list(perm)))
    for (a, _), (b, _) in zip(base, perm_):
        for n in a.params:
            assert torch.allclose(a.params[n], b.params[n], atol=1e-5), (a.round, n)
        # silo k's private residual follows silo k
        for pos, k in enumerate(perm):
            assert torch.allclose(a.silo_states[k]["weight/e"], b.silo_states[pos]["weight/e"], atol=1e-5)


# --------------------------------------------------------------------------- payload


@pytest.mark.parametrize("rel", ["off", "blend", "consensus"])
@pytest.mark.parametrize("shape,rank", [((12, 10), 3), ((8, 14), 8), ((5, 7), 64)])
def test_payload_formula_equals_bytes_produced(shape, rank, rel):
    m, n = shape
    prob = make_toy(m=m, n=n, n_silos=3, generator=_gen(1))
    strat = FedCMP(FedCMPConfig(rank=rank, reliability=rel))
    (_, rep), = list(_rounds(strat, prob, 1, 3))
    r = min(rank, m, n)
    numbers = fm.matrix_payload_numbers(m, n, r, rel) + m + 1  # + bias + Σw
    assert fm.matrix_payload_numbers(m, n, r, rel) == r * (m + n) + {"off": 0, "blend": r * n + 1, "consensus": 2 * r * n + 1}[rel]
    assert rep.upload_bytes == [4 * numbers] * 3
    assert payload_numbers(strat, prob.init_params(_gen(0))) == numbers


def test_llava_payload_at_least_10x_smaller():
    params = {
        "0.weight": torch.empty(4096, 1024, device="meta"),
        "0.bias": torch.empty(4096, device="meta"),
        "2.weight": torch.empty(4096, 4096, device="meta"),
        "2.bias": torch.empty(4096, device="meta"),
    }
    full = payload_numbers(FedAvg(), params)
    assert full == 4096 * 1024 + 4096 * 4096 + 2 * 4096 + 1
    for rank in (8, 16, 32, 64):
        for rel in ("off", "blend"):
            cmp_ = payload_numbers(FedCMP(FedCMPConfig(rank=rank, reliability=rel)), params)
            expect = sum(fm.matrix_payload_numbers(4096, k, rank, rel == "blend") for k in (1024, 4096))
            assert cmp_ == expect + 2 * 4096 + 1
            assert full / cmp_ >= 10, (rank, rel, full / cmp_)
    # docs/design.md §4 (payload): the 4096×4096 layer alone at r = 64 is 32× smaller
    assert 4096 * 4096 / fm.matrix_payload_numbers(4096, 4096, 64, False) == 32


# --------------------------------------------------------------------------- error feedback


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), r=st.integers(1, 6), w=st.floats(0.05, 1.0))
def test_error_feedback_carried_plus_sent_equals_update(seed, r, w):
    g = _gen(seed)
    m, n = 9, 7
    strat = FedCMP(FedCMPConfig(rank=r, reliability="off"))
    params = {"weight": torch.randn(m, n, generator=g, dtype=torch.float64)}
    public = strat.init_public(params)
    e_old = torch.randn(m, n, generator=g, dtype=torch.float64)
    delta = {"weight": torch.randn(m, n, generator=g, dtype=torch.float64)}
    state = {"weight/e": e_old}
    c0, _ = strat.silo_contribution(0, delta, w, public, state)
    u = fm.orth(c0["weight/P"])  # a single silo's own basis stands in for the aggregator's
    c1, new_state = strat.silo_contribution(1, delta, w, {**public, "weight/U": u}, state)
    sent = u @ (c1["weight/A"] / w)  # what the coefficients carry back into m×n
    assert torch.allclose(new_state["weight/e"] + sent, delta["weight"] + e_old, atol=1e-10)
    assert torch.allclose(state["weight/e"], e_old)  # inputs untouched


def test_without_error_feedback_silo_state_stays_empty():
    strat = FedCMP(FedCMPConfig(rank=2, error_feedback=False, reliability="off"))
    assert strat.init_silo_state({"weight": torch.zeros(4, 3)}) == {}
    cfg = FedCMPConfig().under_dp()  # measured (results/notes/dp_notes.md): EF and OPM kept, the noisy ρ off
    assert cfg.error_feedback is True and cfg.beta == 0.5 and cfg.reliability == "off"


# --------------------------------------------------------------------------- reliability and fusion


def test_reliability_is_one_without_reference_and_clipped_cosine_otherwise():
    u = fm.orth(torch.randn(6, 2, generator=_gen(0)))
    d = torch.randn(6, 5, generator=_gen(1))
    assert fm.reliability(d, u, torch.zeros(2, 5)) == 1.0
    ref = u.T @ d
    assert fm.reliability(d, u, ref) == pytest.approx(1.0)
    assert fm.reliability(-d, u, ref) == 0.0
    half = ref + torch.randn(2, 5, generator=_gen(2)) * ref.norm()
    rho = fm.reliability(d, u, half)
    cos = float((ref.flatten() @ half.flatten()) / (ref.norm() * half.norm()))
    assert rho == pytest.approx(max(cos, 0.0), abs=1e-6)


def test_blended_fusion_is_convex_combination_of_silo_coefficients():
    g = _gen(4)
    u = fm.orth(torch.randn(7, 3, generator=g, dtype=torch.float64))
    ms = [torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    ws, rhos, kappa = [0.2, 0.9, 0.5, 1.0], [0.0, 0.3, 1.0, 0.7], 1.0
    per = [u.T @ m for m in ms]
    sums = Sums(
        {
            "W/A": sum(w * a for w, a in zip(ws, per)),
            "W/rA": sum(w * r * a for w, r, a in zip(ws, rhos, per)),
            "W/rw": torch.tensor([sum(w * r for w, r in zip(ws, rhos))], dtype=torch.float64),
            "weight": torch.tensor([sum(ws)], dtype=torch.float64),
        },
        n_silos=4,
    )
    coef = [w * (r + kappa) for w, r in zip(ws, rhos)]
    expect = sum(c * a for c, a in zip(coef, per)) / sum(coef)
    assert torch.allclose(fm.fuse_coefficients(sums, "W", True, kappa), expect, atol=1e-12)
    plain = sum(w * a for w, a in zip(ws, per)) / sum(ws)
    assert torch.allclose(fm.fuse_coefficients(sums, "W", False), plain, atol=1e-12)
    assert not torch.allclose(expect, plain, atol=1e-3)


def test_aggregator_side_refuses_per_silo_lists():
    parts = [{"W/P": torch.zeros(3, 2), "weight": torch.ones(1)}] * 3
    for fn, args in [
        (fm.shared_basis, (parts, "W")),
        (fm.fuse_coefficients, (parts, "W", False)),
        (fm.weighted_mean, (parts, "W")),
    ]:
        with pytest.raises(TypeError, match="Sums"):
            fn(*args)
    with pytest.raises(TypeError):
        Sums(tensors=parts, n_silos=3)


def test_momentum_transport_stays_in_current_subspace():
    g = _gen(11)
    u = fm.orth(torch.randn(10, 3, generator=g, dtype=torch.float64))
    u_prev = fm.orth(torch.randn(10, 3, generator=g, dtype=torch.float64))
    c_prev = torch.randn(3, 6, generator=g, dtype=torch.float64)
    a_hat = torch.randn(3, 6, generator=g, dtype=torch.float64)
    c = fm.momentum_step(a_hat, u, u_prev, c_prev, 0.5)
    # U C_t = U Â + β · (orthogonal projection of the previous step onto span U)
    proj = u @ u.T @ (u_prev @ c_prev)
    assert torch.allclose(u @ c, u @ a_hat + 0.5 * proj, atol=1e-12)
    assert math.isclose(float(torch.linalg.norm(fm.momentum_step(a_hat, u, u_prev, c_prev, 0.0) - a_hat)), 0.0)


def test_consensus_direction_counts_every_silo_once():
    g = _gen(12)
    u = fm.orth(torch.randn(8, 3, generator=g, dtype=torch.float64))
    deltas = [torch.randn(8, 5, generator=g, dtype=torch.float64) * scale for scale in (1.0, 100.0, 0.01)]
    ds = [fm.direction(d, u) for d in deltas]
    assert all(abs(float(torch.linalg.norm(x)) - 1.0) < 1e-12 for x in ds)
    d_bar = fm.consensus_direction(Sums({"W/D": sum(ds)}, n_silos=3), "W")
    assert torch.allclose(d_bar, sum(ds) / 3)
    # the huge update does not dominate: its direction weighs what the others' do
    assert float(torch.linalg.norm(d_bar - ds[1])) > 0.5
    assert torch.equal(fm.direction(torch.zeros(8, 5, dtype=torch.float64), u), torch.zeros(3, 5, dtype=torch.float64))


# --------------------------------------------------------------------------- reliability against a reference


def test_sharpen_floor_and_power():
    assert fm.sharpen(0.3) == pytest.approx(0.3)  # identity at the defaults
    assert fm.sharpen(-0.2) == 0.0
    assert fm.sharpen(0.3, floor=0.5) == 0.0
    assert fm.sharpen(0.75, floor=0.5) == pytest.approx(0.5)
    assert fm.sharpen(0.5, power=2.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        fm.sharpen(0.5, floor=1.0)


def test_reliability_terms_normalize_to_the_reference_size():
    g = _gen(11)
    u = fm.orth(torch.randn(7, 3, generator=g, dtype=torch.float64))
    m = torch.randn(7, 5, generator=g, dtype=torch.float64)
    ref = 0.1 * (u.T @ m) + 0.01 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    ra, rw, rho = fm.reliability_terms(m, m, u, ref, 0.5, normalize=True)
    assert 0 < rho <= 1 and float(rw) == pytest.approx(0.5 * rho)
    assert float(ra.norm()) == pytest.approx(0.5 * rho * float(ref.norm()))
    ra_raw, _, _ = fm.reliability_terms(m, m, u, ref, 0.5)
    assert float(ra_raw.norm()) == pytest.approx(0.5 * rho * float((u.T @ m).norm()))


def _reference_round(cfg, deltas, ref_delta, weights):
    strat = FedCMP(cfg, reference_update=lambda params: {"weight": ref_delta, "bias": torch.zeros(6)})
    params = {"weight": torch.zeros(6, 5, dtype=torch.float32), "bias": torch.zeros(6)}
    st_ = init_state(strat, params, len(deltas))
    return run_round(strat, st_, [{"weight": d, "bias": torch.zeros(6)} for d in deltas], weights,
                     plain_sum_insecure)


def test_reference_reliability_scores_each_silo_against_the_coordinators_update():
    g = _gen(12)
    good = torch.randn(6, 5, generator=g)
    deltas = [good + 0.05 * torch.randn(6, 5, generator=g) for _ in range(3)] + [-good]  # silo 3 opposes
    cfg = FedCMPConfig(rank=5, reliability="reference", kappa=0.01, beta=0.0, error_feedback=False)
    st_, rep = _reference_round(cfg, deltas, good, [1.0] * 4)
    rho = [float(s["weight/rho"]) for s in st_.silo_states]
    assert rho[3] == 0.0 and min(rho[:3]) > 0.9
    assert 0 < rep.metrics["mean_reliability"] < 0.8
    # with ρ_3 = 0 and small κ the step is (nearly) the clean silos' mean; plain fusion would cancel it
    clean = sum(deltas[:3]) / 3
    assert torch.allclose(st_.params["weight"], clean, atol=0.05 * float(clean.abs().max()))
    off, _ = _reference_round(FedCMPConfig(rank=5, beta=0.0, error_feedback=False, reliability="off"), deltas, good, [1.0] * 4)
    assert not torch.allclose(off.params["weight"], clean, atol=0.05 * float(clean.abs().max()))


def test_reference_reliability_without_the_coordinators_hook_is_a_config_error():
    from fedalign.protocol.errors import ConfigError

    strat = FedCMP(FedCMPConfig(rank=2, reliability="reference"))
    with pytest.raises(ConfigError, match=r"needs the coordinator's public set.*\[reference\] config"):
        init_state(strat, {"weight": torch.zeros(4, 3)}, 2)  # round 0 needs the reference already


def test_reference_payload_equals_blend():
    params = {"weight": torch.zeros(12, 10), "bias": torch.zeros(12)}
    ref = payload_numbers(FedCMP(FedCMPConfig(rank=3, reliability="reference")), params)
    assert ref == payload_numbers(FedCMP(FedCMPConfig(rank=3, reliability="blend")), params)
    assert ref == fm.matrix_payload_numbers(12, 10, 3, "reference") + 12 + 1


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
def test_reference_rho_is_smoothed_with_the_silos_own_last_rho(smoothing):
    g = _gen(13)
    ref = torch.randn(6, 5, generator=g)
    d = ref + 2 * torch.randn(6, 5, generator=g)
    cfg = FedCMPConfig(rank=5, reliability="reference", rho_smoothing=smoothing, error_feedback=False)
    strat = FedCMP(cfg, reference_update=lambda params: {"weight": ref})
    public = {**strat.init_public({"weight": torch.zeros(6, 5)}), "weight/U": fm.orth(torch.randn(6, 5, generator=g))}
    raw = fm.agreement(d, ref)
    assert raw > 0.05
    _, state = strat.silo_contribution(1, {"weight": d}, 1.0, public, {"weight/rho": torch.tensor([0.9])})
    assert float(state["weight/rho"]) == pytest.approx(smoothing * 0.9 + (1 - smoothing) * raw, abs=1e-6)
    _, first = strat.silo_contribution(1, {"weight": d}, 1.0, public, {})  # round 0: nothing to smooth with
    assert float(first["weight/rho"]) == pytest.approx(raw, abs=1e-6)
