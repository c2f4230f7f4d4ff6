"""The trusted roster file both sides read: each silo's CURVE transport key and Ed25519 identity.

It is exchanged out of band (like the aggregator's public key), never learned from the
network: the aggregator admits only its CURVE keys (ZAP allowlist), and silos check the
identity signatures of the secure sum against it, so a malicious aggregator cannot slip in
keys of its own. ``silo keygen`` prints each silo's entry::

    [silos."hospital-a"]
    curve_public_key = "<40 Z85 characters>"
    identity_public_key = "<64 hex characters>"

``aggregator keygen`` prints the aggregator's entry, which silos and auditors use to check the
aggregator's signed ledger heads and closing receipts (and, when set, its CURVE key)::

    [aggregator]
    curve_public_key = "<40 Z85 characters>"
    identity_public_key = "<64 hex characters>"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from fedalign.protocol.config import StrictModel, load_config
from fedalign.protocol.keys import z85_decode

__all__ = ["SiloEntry", "AggregatorEntry", "RosterFile", "load_roster", "roster_entry_toml", "aggregator_entry_toml"]


class SiloEntry(StrictModel):
    curve_public_key: str = Field(description="Z85 CURVE public key (transport)")
    identity_public_key: str = Field(description="hex Ed25519 public key (signs secure-sum keys)")

    @field_validator("curve_public_key")
    @classmethod
    def _z85(cls, v: str) -> str:
        if len(v) != 40 or len(z85_decode(v)) != 32:
            raise ValueError("expected 40 Z85 characters")
        return v

    @field_validator("identity_public_key")
    @classmethod
    def _hex(cls, v: str) -> str:
        if len(v) != 64 or len(bytes.fromhex(v)) != 32:
            raise ValueError("expected 64 hex characters")
        return v.lower()


class AggregatorEntry(SiloEntry):
    """The aggregator's keys: its identity signs its ledger, its heads and its closing receipts."""

    curve_public_key: str | None = Field(None, description="Z85 CURVE public key (transport); optional here")
    identity_public_key: str = Field(description="hex Ed25519 public key (signs the aggregator's ledger)")

    @field_validator("curve_public_key")
    @classmethod
    def _z85(cls, v: str | None) -> str | None:
        return None if v is None else SiloEntry._z85(v)


class RosterFile(StrictModel):
    silos: dict[str, SiloEntry] = Field(default_factory=dict)
    aggregator: AggregatorEntry | None = Field(None, description="the aggregator's keys (aggregator keygen)")

    @field_validator("silos")
    @classmethod
    def _distinct(cls, v: dict[str, SiloEntry]) -> dict[str, SiloEntry]:
        for kind in ("curve_public_key", "identity_public_key"):
            seen: dict[str, str] = {}
            for name, e in v.items():
                k = getattr(e, kind)
                if k in seen:
                    raise ValueError(f"silos {seen[k]!r} and {name!r} share one {kind}")
                seen[k] = name
        if "aggregator" in v:
            raise ValueError("'aggregator' is reserved and cannot name a silo")
        return v

    def identities(self, names: Any = None) -> dict[str, str]:
        """name -> identity public key (hex) for ``names`` (default: every silo)."""
        names = list(self.silos) if names is None else list(names)
        return {n: self.silos[n].identity_public_key for n in names}

    def curve_keys(self) -> dict[str, str]:
        return {n: e.curve_public_key for n, e in self.silos.items()}


def load_roster(path: Path | str) -> RosterFile:
    """Read and validate a roster file; ConfigError names the file and field."""
    return load_config(path, RosterFile)


def roster_entry_toml(name: str, curve_public_key: str, identity_public_key: str) -> str:
    """The roster entry for one silo, as ``silo keygen`` prints it."""
    return f'[silos."{name}"]\ncurve_public_key = "{curve_public_key}"\nidentity_public_key = "{identity_public_key}"\n'


def aggregator_entry_toml(curve_public_key: str, identity_public_key: str) -> str:
    """The roster's ``[aggregator]`` entry, as ``aggregator keygen`` prints it."""
    return f'[aggregator]\ncurve_public_key = "{curve_public_key}"\nidentity_public_key = "{identity_public_key}"\n'
