"""Identity files (0600, never overwritten, refused when others can read them) and rosters."""

import os

import pytest

from fedalign.crypto import Roster, SecureSumUsageError, generate_identity, load_identity, save_identity


def test_save_and_load_round_trip(tmp_path):
    ident = generate_identity()
    path = tmp_path / "silo.key"
    save_identity(ident, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_identity(path).public_bytes == ident.public_bytes
    assert ident.public_hex[:16] in repr(ident) and "PRIVATE" not in repr(ident)


def test_never_overwrites(tmp_path):
    path = tmp_path / "silo.key"
    save_identity(generate_identity(), path)
    with pytest.raises(SecureSumUsageError, match="overwrite"):
        save_identity(generate_identity(), path)


def test_refuses_a_key_others_can_read(tmp_path):
    path = tmp_path / "silo.key"
    save_identity(generate_identity(), path)
    os.chmod(path, 0o644)
    with pytest.raises(SecureSumUsageError, match="chmod 600"):
        load_identity(path)


def test_refuses_garbage(tmp_path):
    path = tmp_path / "silo.key"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(SecureSumUsageError, match="PEM"):
        load_identity(path)


def test_roster_accepts_hex_and_bytes_and_checks_entries():
    a, b = generate_identity(), generate_identity()
    r = Roster({"b": b.public_hex, "a": a.public_bytes})
    assert r.ids == ("a", "b") and r.point("b") == 2 and r.to_hex()["b"] == b.public_hex
    with pytest.raises(SecureSumUsageError, match="32 bytes"):
        Roster({"a": b"short"})
    with pytest.raises(SecureSumUsageError, match="silo id"):
        Roster({"aggregator": a.public_bytes})
    with pytest.raises(SecureSumUsageError, match="share one public key"):
        Roster({"a": a.public_bytes, "b": a.public_bytes})
