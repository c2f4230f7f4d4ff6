"""The silo's raw, unmasked update and its federation state are written owner-only (issue #10).

The writer is ``fedalign.silo.store.FederationStore`` (through ``fedalign.host.atomic``, whose default is 0600).
"""

from __future__ import annotations

import torch


def _mode(p):
    return p.stat().st_mode & 0o777


def test_the_silos_raw_update_and_state_files_are_owner_only(tmp_path):
    from fedalign.silo.store import FederationStore as _Store, TrainedUpdate

    store = _Store(tmp_path)
    store.save_update(0, "d" * 64, TrainedUpdate({"w": torch.ones(2)}, 4, None, {}))
    store.save_state(0, {"r": torch.zeros(1)})
    store.save_pending(1, {"r": torch.zeros(1)})
    store.mark_exposed(0, "d" * 64)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "last_update.safetensors" in files and len(files) == 5
    for n in files:
        assert _mode(tmp_path / n) == 0o600, n
