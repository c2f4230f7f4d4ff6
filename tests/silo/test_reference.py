"""silo/reference.py: ``silo reference``, the coordinator's public reference trained by the silo's code."""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fedalign.protocol.config.silo import load_silo_config
from fedalign.protocol.errors import ConfigError
from fedalign.silo.cli import app
from fedalign.protocol.reference import REPLY_PREFIX
from fedalign.silo.reference import serve_requests
from fedalign.silo.sources import load_inputs

PUBLIC = """
[model]
vision_tower = "embedded"
llm = "embedded"
device = "cpu"
[data]
source = "world"
shard_size = 16
[data.world]
spec = "tiny"
public = {public}
n_silos = 3
silo_index = {index}
scenario = "label_skew"
samples_per_silo = 48
test_size = 16
probe_samples = 0
[train]
batch_size = 8
seed = 0
[privacy]
enabled = {dp}
[output]
dir = "out"
"""


def _cfg(tmp_path, name="public.toml", *, public=True, index=0, dp=False):
    p = tmp_path / name
    p.write_text(PUBLIC.format(public=str(public).lower(), index=index, dp=str(dp).lower()))
    return p


def test_the_world_public_set_shares_no_image_with_any_silo_or_the_test_split(tmp_path):
    pub = load_inputs(load_silo_config(_cfg(tmp_path), {}))
    assert len(pub.train) == 48 and all(r.origin.startswith("world:public") for r in pub.train)
    own = {bytes(memoryview(r.image.tobytes())) for r in pub.train}
    others = []
    for k in range(3):
        silo = load_inputs(load_silo_config(_cfg(tmp_path, f"s{k}.toml", public=False, index=k), {}))
        others += silo.train
    others += pub.heldout
    assert own.isdisjoint(bytes(memoryview(r.image.tobytes())) for r in others)


def _requests(tmp_path, params, rounds):
    save_file(params, str(tmp_path / "theta.safetensors"))
    lines = [json.dumps({"round": t, "params": str(tmp_path / "theta.safetensors"),
                         "out": str(tmp_path / f"ref{i}.safetensors")}) for i, t in enumerate(rounds)]
    return "\n".join(lines + ["not json", json.dumps({"round": -1, "params": "x", "out": "y"})]) + "\n"


def test_serves_each_round_deterministically_and_answers_bad_requests_without_stopping(tmp_path):
    cfg = load_silo_config(_cfg(tmp_path), {})
    from fedalign.silo.session import load_model

    theta = {k: v.clone().contiguous() for k, v in load_model(cfg).projector_state().items()}
    out = io.StringIO()
    served = serve_requests(cfg, io.StringIO(_requests(tmp_path, theta, [0, 1, 0])), out)
    answers = [json.loads(x[len(REPLY_PREFIX):]) for x in out.getvalue().splitlines() if x.startswith(REPLY_PREFIX)]
    assert served == 3 and answers[0] == {"ready": True, "records": 48, "shards": 3}
    assert [a["ok"] for a in answers[1:]] == [True, True, True, False, False]
    assert "bad request line" in answers[4]["error"] and "round must be an int" in answers[5]["error"]
    r0, r1, r0b = (load_file(str(tmp_path / f"ref{i}.safetensors")) for i in range(3))
    assert set(r0) == set(theta) and all(r0[k].shape == theta[k].shape for k in theta)
    assert all(torch.equal(r0[k], r0b[k]) for k in r0)  # the same round: the same reference (restarts)
    assert not torch.equal(r0["0.weight"], r1["0.weight"])
    assert float(r0["0.weight"].abs().sum()) > 0


def test_a_theta_that_does_not_fit_the_models_is_refused_and_the_next_request_served(tmp_path):
    cfg = load_silo_config(_cfg(tmp_path), {})
    bad = {"0.weight": torch.zeros(3, 3)}
    out = io.StringIO()
    serve_requests(cfg, io.StringIO(_requests(tmp_path, bad, [0])), out)
    ans = json.loads(out.getvalue().splitlines()[-3][len(REPLY_PREFIX):])
    assert ans["ok"] is False and "must be the silos' models" in ans["error"]
    assert not (tmp_path / "ref0.safetensors").exists()


def test_the_cli_refuses_dp_on_a_public_set_in_one_line(tmp_path):
    r = CliRunner().invoke(app, ["reference", "--config", str(_cfg(tmp_path, dp=True))])
    assert r.exit_code == 2, r.output
    assert "privacy.enabled = false" in r.output and "Traceback" not in r.output
    with pytest.raises(ConfigError):
        serve_requests(load_silo_config(_cfg(tmp_path, dp=True), {}), io.StringIO(""), io.StringIO())


def test_a_symlinked_theta_is_refused_not_followed(tmp_path):
    cfg = load_silo_config(_cfg(tmp_path), {})
    from fedalign.silo.session import load_model

    theta = {k: v.clone().contiguous() for k, v in load_model(cfg).projector_state().items()}
    req = _requests(tmp_path, theta, [0])
    (tmp_path / "real.safetensors").write_bytes((tmp_path / "theta.safetensors").read_bytes())
    (tmp_path / "theta.safetensors").unlink()
    (tmp_path / "theta.safetensors").symlink_to(tmp_path / "real.safetensors")
    out = io.StringIO()
    serve_requests(cfg, io.StringIO(req), out)
    ans = json.loads(out.getvalue().splitlines()[-3][len(REPLY_PREFIX):])
    assert ans["ok"] is False and "a symlink is refused" in ans["error"] and "theta.safetensors" in ans["error"]
    assert not (tmp_path / "ref0.safetensors").exists()
