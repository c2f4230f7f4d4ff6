"""``silo keygen``: a silo's CURVE transport key pair and its Ed25519 identity, plus its roster entry.

The CURVE pair (``<name>.key``, ``<name>.key_secret``) authenticates the connection; the
identity (``<name>.identity``, PKCS#8 PEM) signs the silo's fresh keys in every secure sum.
All three files are written with mode 0600 and never overwritten without ``overwrite``. The
printed roster entry is what the federation's ``roster.toml`` needs (public keys only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedalign.protocol.config.roster import roster_entry_toml
from fedalign.host.atomic import atomic_write_text
from fedalign.protocol.errors import ConfigError
from fedalign.protocol.files import PUBLIC_FILE_MODE
from fedalign.protocol.keys import load_public, write_keypair
from fedalign.crypto.errors import SecureSumUsageError
from fedalign.crypto.identity import generate_identity, load_identity, save_identity

__all__ = ["SiloKeys", "keygen_silo", "add_to_roster"]


@dataclass(frozen=True)
class SiloKeys:
    public_key: Path
    secret_key: Path
    identity: Path
    roster_entry: str


def keygen_silo(out_dir: Path | str, name: str, *, overwrite: bool = False) -> SiloKeys:
    """Write the silo's key files into ``out_dir`` and return their paths and its roster entry."""
    d = Path(out_dir)
    ident = d / f"{name}.identity"
    if ident.exists():
        if not overwrite:
            raise ConfigError(f"{ident} exists; pass --overwrite to replace it (the old identity stops working)")
        ident.unlink()
    pub, sec = write_keypair(d, name, role="silo", overwrite=overwrite)
    identity = generate_identity()
    try:
        save_identity(identity, ident)
    except SecureSumUsageError as e:
        raise ConfigError(str(e)) from e
    entry = roster_entry_toml(name, load_public(pub), load_identity(ident).public_hex)
    # public (keys only): 0644 exactly, whatever the umask
    atomic_write_text(d / f"{name}.roster.toml", entry, mode=PUBLIC_FILE_MODE)
    return SiloKeys(pub, sec, ident, entry)


def add_to_roster(roster: Path | str, name: str, entry: str | None) -> None:
    """Append ``entry`` to ``roster`` (created if absent); ConfigError if ``name`` is already listed.
    With ``entry`` None only the check runs."""
    import tomllib

    p = Path(roster)
    text = p.read_text(encoding="utf-8") if p.exists() else ""
    try:
        listed = tomllib.loads(text).get("silos", {})
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    if name in listed:
        raise ConfigError(f"{p} already lists silo {name!r}; remove its entry first (or pick another --name)")
    if entry is None:
        return
    head = "" if text else "# trusted silo keys (public only), exchanged out of band\n"
    mode = p.stat().st_mode & 0o777 if p.exists() else PUBLIC_FILE_MODE  # an existing roster keeps its mode
    atomic_write_text(p, text + head + ("\n" if text and not text.endswith("\n\n") else "") + entry + "\n", mode=mode)
