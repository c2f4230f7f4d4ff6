"""The aggregator CLI in process (Typer's CliRunner) and its checkpoints: keys, bad input as one
line with the right exit code, insecure modes gated twice, status, tamper-evident checkpoints."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from typer.testing import CliRunner

from fedalign.aggregator.checkpoint import CheckpointStore, RunState
from fedalign.aggregator.cli import build_app
from fedalign.protocol.errors import CheckpointError
from fedalign.protocol.keys import load_keypair

runner = CliRunner()


def _run(*args):
    r = runner.invoke(build_app(), list(args))
    return r.exit_code, r.output  # stdout and stderr together


def _federation(tmp_path, **sections):
    """Keys for the aggregator and three silos, a roster, and an aggregator.toml."""
    from fedalign.silo.keys import keygen_silo

    tmp_path.mkdir(parents=True, exist_ok=True)
    code, _ = _run("keygen", "--out", str(tmp_path / "keys"))
    assert code == 0
    (tmp_path / "roster.toml").write_text("\n".join(keygen_silo(tmp_path / "keys", f"s{i}").roster_entry
                                                    for i in range(3)))
    body = {"server": {"bind": '"tcp://127.0.0.1:0"', "secret_key": '"keys/aggregator.key_secret"'},
            "run": {"rounds": 1, "roster_wait_s": 0.5},
            "init": {"d_vision": 4, "d_model": 6, "projector": '"linear"'},
            # these tests are not about reliability: Fed-CMP without the coordinator's public reference
            "strategy": {"options": '{ reliability = "off" }'}}
    for sec, kv in sections.items():
        body.setdefault(sec, {}).update(kv)
    text = "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {v}" for k, v in kv.items()) for s, kv in body.items())
    (tmp_path / "aggregator.toml").write_text(text)
    return tmp_path / "aggregator.toml"


def test_keygen_writes_0600_files_and_refuses_to_overwrite(tmp_path):
    code, out = _run("keygen", "--out", str(tmp_path))
    assert code == 0 and "public key" in out
    sec = tmp_path / "aggregator.key_secret"
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "aggregator.key").stat().st_mode) == 0o600
    assert load_keypair(sec).public in out
    code, out = _run("keygen", "--out", str(tmp_path))
    assert code == 2 and out.strip().count("\n") == 0 and "exists" in out


def test_bad_config_is_one_line_naming_the_field(tmp_path):
    cfg = _federation(tmp_path, run={"min_silos": 1})
    code, out = _run("serve", "--config", str(cfg))
    assert code == 2, out
    assert out.strip().count("\n") == 0 and "run.min_silos" in out and "aggregator.toml" in out
    code, out = _run("serve", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "not found" in out


def test_fedcmp_default_reliability_without_a_public_set_is_refused_before_anything_is_written(tmp_path):
    # Fed-CMP's default is reliability "reference": serve needs [reference] config (the public set)
    cfg = _federation(tmp_path, strategy={"name": '"fedcmp"', "options": "{}"}, output={"dir": '"out"'})
    code, out = _run("serve", "--config", str(cfg))
    assert code == 2, out
    assert out.strip().count("\n") == 0 and "[reference] config" in out and "aggregator.toml" in out
    assert "reliability = 'off'" in out
    assert not (tmp_path / "out").exists()
    cfg = _federation(tmp_path / "b", strategy={"name": '"fedcmp"', "options": "{}"}, output={"dir": '"out"'},
                      reference={"config": '"nowhere.toml"'})
    code, out = _run("serve", "--config", str(cfg))
    assert code == 2 and "reference.config" in out and "nowhere.toml" in out and "not found" in out, out
    assert not (tmp_path / "b" / "out").exists()


def test_roster_smaller_than_min_silos_is_refused(tmp_path):
    cfg = _federation(tmp_path, run={"min_silos": 4})
    code, out = _run("serve", "--config", str(cfg))
    assert code == 2 and "3 silo(s) listed, run.min_silos is 4" in out


@pytest.mark.parametrize("policy,flag", [(False, False), (True, False), (False, True)])
def test_plain_sums_need_policy_and_flag(tmp_path, policy, flag):
    cfg = _federation(tmp_path, server={"allow_insecure_plaintext": str(policy).lower()},
                      secure_sum={"scheme": '"plain"'})
    code, out = _run("serve", "--config", str(cfg), *(["--insecure-plaintext"] if flag else []))
    assert code == 10, out
    assert "InsecureModeRefused" in out
    assert ("site policy" in out) == (not policy) and ("--insecure-plaintext on the command line" in out) == (not flag)


def test_serve_without_silos_gives_up_after_the_roster_wait(tmp_path):
    cfg = _federation(tmp_path)
    code, out = _run("serve", "--config", str(cfg), "--quiet")
    assert code == 8 and "only 0 silo(s) live" in out  # RoundAborted


def test_status_reads_the_checkpoint(tmp_path):
    cfg = _federation(tmp_path)
    code, out = _run("status", "--config", str(cfg))
    assert code == 0 and "0 of 1 rounds" in out
    store = CheckpointStore(tmp_path / "aggregator-out" / "checkpoints")
    store.save(RunState(1, {"w": torch.ones(2)}, {}, {}, meta={"strategy": "fedavg", "scheme": "secagg"},
                        history=[{"round": 0, "survivors": ["s0", "s1", "s2"], "dropped": [], "seconds": 1.5}]))
    code, out = _run("status", "--config", str(cfg))
    assert code == 0 and "1 of 1 rounds committed (fedavg, secagg)" in out and "s0, s1, s2" in out


def test_checkpoint_round_trip_prunes_and_detects_tampering(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    assert store.load() is None
    for r in range(1, 4):
        store.save(RunState(r, {"w": torch.full((3,), float(r))}, {"q": torch.eye(2)}, {"m": torch.zeros(1)},
                            meta={"k": r}, history=[{"round": i} for i in range(r)]))
    st = store.load()
    assert st.round == 3 and torch.equal(st.params["w"], torch.full((3,), 3.0)) and torch.equal(st.public["q"], torch.eye(2))
    assert st.meta == {"k": 3} and len(st.history) == 3 and set(st.server_state) == {"m"}
    assert sorted(p.name for p in tmp_path.glob("round-*.safetensors")) == ["round-000002.safetensors", "round-000003.safetensors"]
    assert not list(tmp_path.glob(".*tmp*"))
    f = tmp_path / "round-000003.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        store.load()
    doc = json.loads(store.state_path.read_text())
    doc["version"] = 99
    store.state_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="version"):
        store.load()


def test_a_crash_before_the_commit_point_keeps_the_previous_round(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(RunState(1, {"w": torch.ones(1)}, {}, {}))
    import fedalign.aggregator.checkpoint as ck

    real = ck._atomic_write

    def crash_on_state(path, write):
        if path.name == "state.json":
            raise OSError("simulated crash")
        real(path, write)

    monkeypatch.setattr(ck, "_atomic_write", crash_on_state)
    with pytest.raises(OSError):
        store.save(RunState(2, {"w": torch.full((1,), 2.0)}, {}, {}))
    monkeypatch.undo()
    st = store.load()
    assert st.round == 1 and float(st.params["w"]) == 1.0


def test_silo_keygen_entry_is_what_the_roster_expects(tmp_path):
    from fedalign.protocol.config.roster import load_roster
    from fedalign.crypto.identity import load_identity
    from fedalign.silo.cli import app as silo_app

    r = runner.invoke(silo_app, ["keygen", "--name", "clinic.north", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for suffix in (".key", ".key_secret", ".identity"):
        assert stat.S_IMODE((tmp_path / f"clinic.north{suffix}").stat().st_mode) == 0o600
    (tmp_path / "roster.toml").write_text((tmp_path / "clinic.north.roster.toml").read_text())
    entry = load_roster(tmp_path / "roster.toml").silos["clinic.north"]
    assert entry.curve_public_key == load_keypair(tmp_path / "clinic.north.key_secret").public
    assert entry.identity_public_key == load_identity(tmp_path / "clinic.north.identity").public_hex


def test_serve_repairs_a_ledger_that_lost_a_committed_round(tmp_path):
    # Before: a crash (or a NaN ε) between the checkpoint and the ledger append left a committed
    # round without its ledger entry, for good. Now serve appends it at start, marked recovered.
    from fedalign.fedcmp.strategies import make_strategy, strategy_options
    from fedalign.compliance.ledger import Ledger

    cfg = _federation(tmp_path)
    meta = {"strategy": "fedcmp", "strategy_options": strategy_options(make_strategy("fedcmp", reliability="off")),
            "scheme": "secagg"}
    store = CheckpointStore(tmp_path / "aggregator-out" / "checkpoints")
    rec = {"round": 0, "survivors": ["s0", "s1", "s2"], "dropped": [], "epsilon": {"s0": 1.0, "s1": 1.0, "s2": 1.0}}
    store.save(RunState(1, {"weight": torch.zeros(6, 4), "bias": torch.zeros(6)}, {}, {}, meta=meta, history=[rec]))
    code, out = _run("serve", "--config", str(cfg), "--quiet")
    assert code == 0, out
    entries = [e for e in Ledger(tmp_path / "aggregator-out" / "ledger.jsonl").entries() if e.kind == "round_committed"]
    assert [(e.fields["round"], e.fields.get("recovered")) for e in entries] == [(0, True)]


def test_serve_refuses_a_config_breaking_its_site_policy_and_names_every_clause(tmp_path):
    cfg = _federation(tmp_path, secure_sum={"scheme": '"ckks"'})
    (tmp_path / "policy.toml").write_text('[secure_sum]\nschemes = ["secagg"]\nmin_silos = 4\n'
                                          '[silos]\nallowed = ["s0", "s1"]\n')
    code, out = _run("serve", "--config", str(cfg), "--policy", str(tmp_path / "policy.toml"))
    assert code == 2, out
    assert out.strip().count("\n") == 0 and "3 clause(s)" in out
    for clause in ("secure_sum.schemes", "secure_sum.min_silos", "silos.allowed: the roster lists ['s2']"):
        assert clause in out
    assert not (tmp_path / "aggregator-out").exists()  # refused before anything was written


@pytest.mark.parametrize("kind", ["mlp2x_gelu", "linear"])
def test_init_params_reads_a_silo_export_in_llava_or_hf_layout(tmp_path, kind):
    """θ_0 may be a projector a silo exported (e.g. `silo train --local` on the coordinator's public set):
    LLaVA's and HF Llava's layouts read back to the same state as our own keys."""
    from safetensors.torch import save_file

    from fedalign.aggregator.app import initial_params
    from fedalign.protocol.config.aggregator import load_aggregator_config
    from fedalign.silo.export import export_projector

    g = torch.Generator().manual_seed(3)
    state = {"0.weight": torch.randn(6, 4, generator=g), "0.bias": torch.randn(6, generator=g)}
    if kind == "mlp2x_gelu":
        state.update({"2.weight": torch.randn(6, 6, generator=g), "2.bias": torch.randn(6, generator=g)})
    files = export_projector(state, tmp_path / "public-out")
    save_file(state, str(tmp_path / "ours.safetensors"))
    for path in [tmp_path / "ours.safetensors", *files.values()]:
        cfg = load_aggregator_config(_federation(tmp_path / path.stem, init={"params": f'"{path}"'}))
        got = initial_params(cfg)
        assert set(got) == set(state)
        for k in state:
            assert torch.equal(got[k], state[k]), (path.name, k)
    assert len(files) == (2 if kind == "mlp2x_gelu" else 1)


def test_init_params_holding_part_of_a_llava_projector_is_one_line_naming_the_file(tmp_path):
    """A LLaVA-layout file without the whole projector (here its second linear only) is refused before
    anything is written; a state dict in no projector layout still passes through (toy federations)."""
    from safetensors.torch import save_file

    from fedalign.aggregator.app import initial_params
    from fedalign.protocol.config.aggregator import load_aggregator_config

    bad = tmp_path / "part.safetensors"
    save_file({"model.mm_projector.2.weight": torch.zeros(6, 6), "model.mm_projector.2.bias": torch.zeros(6)}, str(bad))
    cfg = _federation(tmp_path, init={"params": f'"{bad}"'})
    code, out = _run("serve", "--config", str(cfg))
    assert code == 2, out
    assert out.strip().count("\n") == 0, out
    assert "init.params" in out and "part.safetensors" in out and "whole projector" in out
    assert not (tmp_path / "aggregator-out").exists()
    toy = tmp_path / "toy.safetensors"
    save_file({"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, str(toy))
    got = initial_params(load_aggregator_config(_federation(tmp_path / "toy", init={"params": f'"{toy}"'})))
    assert set(got) == {"weight", "bias"} and torch.equal(got["weight"], torch.ones(2, 3))
