"""A public basis in the product: ``silo public-basis`` makes it from the coordinator's public set,
``[train] public_basis`` makes a silo train only in it (W_t + U·C), DP's noise then counts r·n values
per matrix, the ledger's DP plan names the file's SHA-256, and a bad file stops the silo with one line
before any data or ε is used."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from test_reference import _cfg as public_cfg

from fedalign.protocol.config.silo import load_silo_config
from fedalign.protocol.errors import ConfigError
from fedalign.silo.cli import app
from fedalign.silo.session import SiloSession
from fedalign.silo.subspace import load_basis, save_basis, subspace_numel

runner = CliRunner()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """θ_0 (a fresh projector for the tiny world's models) and the basis `silo public-basis` makes from it."""
    tmp = tmp_path_factory.mktemp("basis")
    pub = public_cfg(tmp)
    state = SiloSession(load_silo_config(pub, {})).model.projector_state()
    theta0 = tmp / "theta0.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(theta0))
    out = tmp / "basis.safetensors"
    r = runner.invoke(app, ["public-basis", "-c", str(pub), "--init", str(theta0), "--rank", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "rank 3" in r.output
    return tmp, state, out


def _silo_toml(tmp, basis, *, dp=True):
    p = public_cfg(tmp, "silo.toml", public=False, index=1, dp=dp)
    text = p.read_text().replace("[train]\n", f"[train]\npublic_basis = {json.dumps(str(basis))}\n")
    text = text.replace("[privacy]\n", "[privacy]\nepsilon = 50.0\nmax_grad_norm = 0.5\n")
    p.write_text(text)
    return p


def test_public_basis_writes_an_orthonormal_basis_the_silo_accepts(made):
    tmp, state, out = made
    bases, sha = load_basis(out, state)
    mats = sorted(k for k, v in state.items() if v.ndim == 2)
    assert sorted(bases) == mats and len(sha) == 64
    for k, U in bases.items():
        assert U.shape == (state[k].shape[0], 3)
        assert torch.allclose(U.T @ U, torch.eye(3), atol=1e-5)
    meta = __import__("safetensors").safe_open(str(out), "pt").metadata()
    assert meta["rank"] == "3" and meta["passes"] == "1" and len(meta["init_sha256"]) == 64


def test_a_silo_trains_only_in_the_basis_and_dp_counts_its_values(made):
    tmp, state, out = made
    session = SiloSession(load_silo_config(_silo_toml(tmp, out), {}))
    bases = session.basis
    assert session.dp_plan.n_params == subspace_numel(session.model.projector, 3) < sum(v.numel() for v in state.values())
    res = session.train_round({k: v.clone() for k, v in state.items()})
    moved = 0.0
    for k, U in bases.items():
        d = res.delta[k].double()
        assert torch.allclose(U.double() @ (U.double().T @ d), d, atol=1e-6), k  # Δ lies in span(U)
        moved += float(d.norm())
    assert moved > 0  # and it trained
    plan = [json.loads(x) for x in (session.cfg.state_dir / "ledger.jsonl").read_text().splitlines()
            if json.loads(x)["kind"] == "dp_plan"]
    assert plan and plan[0]["public_basis_sha256"] == session.basis_sha256
    assert plan[0]["public_basis_rank"] == {k: 3 for k in bases} and plan[0]["n_params"] == session.dp_plan.n_params


def _bad(tmp, state, name, tensors):
    p = tmp / name
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(p))
    return p


def test_a_bad_basis_file_is_refused_with_one_line_naming_the_tensor(made, tmp_path):
    _, state, out = made
    good, _ = load_basis(out, state)
    k = sorted(good)[0]
    m = state[k].shape[0]
    cases = {
        "scaled.safetensors": ({**good, k: good[k] * 1000}, "not orthonormal"),  # DP holds, every step ×1000 does not
        "nan.safetensors": ({**good, k: torch.full_like(good[k], float("nan"))}, "NaN"),
        "rows.safetensors": ({**good, k: torch.linalg.qr(torch.randn(m + 1, 3))[0]}, "the basis must be"),
        "full.safetensors": ({**good, k: torch.eye(m)[:, : min(state[k].shape)]}, "the basis must be"),
        "name.safetensors": ({**good, "9.weight": good[k]}, "names no weight matrix"),
    }
    for name, (tensors, words) in cases.items():
        with pytest.raises(ConfigError) as e:
            load_basis(_bad(tmp_path, state, name, tensors), state)
        assert words in str(e.value) and name in str(e.value) and "silo public-basis" in str(e.value), name
    (tmp_path / "junk.safetensors").write_bytes(b"not a file of tensors")
    with pytest.raises(ConfigError, match="is not a safetensors file"):
        load_basis(tmp_path / "junk.safetensors", state)
    with pytest.raises(ConfigError, match="cannot read"):
        load_basis(tmp_path / "absent.safetensors", state)


def test_silo_train_stops_on_a_bad_basis_before_any_data_is_used(made, tmp_path):
    tmp, state, out = made
    good, _ = load_basis(out, state)
    bad = _bad(tmp_path, state, "bad.safetensors", {k: v * 2 for k, v in good.items()})
    path = _silo_toml(tmp_path, bad)
    cfg = load_silo_config(path, {})
    r = runner.invoke(app, ["train", "--local", "-c", str(path)])
    assert r.exit_code != 0 and "not orthonormal" in r.output and "Traceback" not in r.output
    assert not (cfg.state_dir / "privacy.json").exists()  # no ε spent, no cursor moved


def test_public_basis_refuses_a_private_config_and_a_theta0_of_other_shapes(made, tmp_path):
    tmp, state, _ = made
    theta0 = tmp / "theta0.safetensors"
    priv = public_cfg(tmp_path, dp=True)
    r = runner.invoke(app, ["public-basis", "-c", str(priv), "--init", str(theta0), "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "privacy.enabled = true" in r.output and not (tmp_path / "b").exists()
    small = tmp_path / "small.safetensors"
    save_file({k: v[..., :2].contiguous() for k, v in state.items()}, str(small))
    r = runner.invoke(app, ["public-basis", "-c", str(public_cfg(tmp_path, "p2.toml")), "--init", str(small),
                            "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "θ_0 has tensors" in r.output and not (tmp_path / "b").exists()
    r = runner.invoke(app, ["public-basis", "-c", str(public_cfg(tmp_path, "p3.toml")), "--init",
                            str(tmp_path / "absent"), "--out", str(tmp_path / "b")])
    assert r.exit_code != 0 and "--init: cannot read" in r.output


def test_save_basis_round_trips(tmp_path):
    U = torch.linalg.qr(torch.randn(6, 2))[0]
    sha = save_basis({"0.weight": U}, tmp_path / "b.safetensors", note="x")
    back, sha2 = load_basis(tmp_path / "b.safetensors", {"0.weight": torch.zeros(6, 5)})
    assert sha == sha2 and torch.equal(back["0.weight"], U.float())
    assert load_file(str(tmp_path / "b.safetensors"))["0.weight"].shape == (6, 2)


def test_a_basis_with_fedprox_is_refused_at_load(made):
    tmp, _, out = made
    path = _silo_toml(tmp, out)
    path.write_text(path.read_text() + '\n[strategy]\nname = "fedprox"\n')
    with pytest.raises(ConfigError, match="train.public_basis with \\[strategy\\] name = \"fedprox\""):
        load_silo_config(path, {})
