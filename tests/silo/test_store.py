"""The silo's federation state on disk: a crash between its two files never pairs a round
with another round's state."""

from __future__ import annotations

import json

import pytest
import torch

from fedalign.protocol.errors import CheckpointError
from fedalign.silo.store import FederationStore as _Store


def test_committed_round_and_state_are_one_atomic_write(tmp_path, monkeypatch):
    store = _Store(tmp_path)
    assert store.load_state() == (-1, None)
    store.save_state(3, {"residual": torch.ones(2)})
    assert store.load_state()[0] == 3
    # a crash right after the state file is written, before federation.json is
    import fedalign.silo.store as rt

    real = rt.atomic_write

    def crash_on_json(path, write):
        if path.name == "federation.json":
            raise KeyboardInterrupt("killed")
        return real(path, write)

    monkeypatch.setattr(rt, "atomic_write", crash_on_json)
    with pytest.raises(KeyboardInterrupt):
        store.save_state(4, {"residual": torch.full((2,), 7.0)})
    assert json.loads((tmp_path / "federation.json").read_text())["committed_round"] == 3  # stale mirror
    committed, state = _Store(tmp_path).load_state()
    assert committed == 4 and torch.equal(state["residual"], torch.full((2,), 7.0))


def test_a_damaged_state_file_is_one_clear_error(tmp_path):
    store = _Store(tmp_path)
    store.save_state(0, {})
    assert store.load_state() == (0, {})
    (tmp_path / "silo_state.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="federation state"):
        store.load_state()
