"""The default world ships with the package: a first run loads it instead of pretraining; it is the
build of this code (its directory is this code's cache key) and each file matches its SHA-256."""

from __future__ import annotations

import shutil

import pytest

from fedalign.world import WorldSpec, build_world, load_world
from fedalign.world import shipped as ship
from fedalign.world.build import _key


def test_the_shipped_world_is_the_default_spec_built_by_this_code():
    key = _key(WorldSpec())
    assert ship.shipped_world(key) is not None, (
        f"fedalign/world/shipped holds no valid world-{key}: the world's code or spec changed; run "
        "`python -m fedalign.world.ship --write` (rebuilds it, about 2 min) and commit the result")
    assert [p.name for p in ship.SHIPPED.iterdir()] == [f"world-{key}"]  # no stale copies travel along


def test_a_first_run_loads_the_shipped_world_without_training(tmp_path):
    art = build_world(WorldSpec(), cache_dir=tmp_path / "empty-cache")
    assert art.shipped and not art.built
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())
    vision, _, lm, tok = load_world(art)
    assert lm.config.vocab_size == len(tok) and vision.config.hidden_size == WorldSpec().vit_hidden


def test_a_tampered_or_stale_copy_is_not_used(tmp_path, monkeypatch):
    key = _key(WorldSpec())
    copy = tmp_path / "shipped"
    shutil.copytree(ship.SHIPPED, copy)
    monkeypatch.setattr(ship, "SHIPPED", copy)
    assert ship.shipped_world(key) is not None
    weights = copy / f"world-{key}" / "lm" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert ship.shipped_world(key) is None  # one flipped bit: the world is built instead
    assert ship.shipped_world("0" * 20) is None  # another code version: no copy


@pytest.mark.parametrize("part", ["vision", "lm"])
def test_compare_worlds_sees_a_changed_tensor(tmp_path, part):
    from safetensors.torch import load_file, save_file

    src = ship.shipped_world(_key(WorldSpec()))
    other = tmp_path / "other"
    shutil.copytree(src, other)
    f = other / part / "model.safetensors"
    t = load_file(str(f))
    k = sorted(t)[0]
    t[k] = t[k] + 0.5
    save_file(t, str(f))
    diff = ship.compare_worlds(src, other)
    assert diff[part] == pytest.approx(0.5, rel=1e-3) and diff["vision" if part == "lm" else "lm"] == 0.0
