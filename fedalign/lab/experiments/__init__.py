"""Every experiment family behind results/, in one registry: the Fed-CMP results table ("fedcmp"),
reliability against the public reference ("reliability"), the privacy-utility grid and its free-form
sweeps ("dp"), and the embedded world's central and per-silo checks ("world-check"). One runner
(fedalign.lab.jobs) runs any of them and one writer (fedalign.lab.tables) makes their tables:

    fedalign-lab experiment run FAMILY [--set KEY=VALUE ...] [--row LABEL ...] [--jobs 2]
    fedalign-lab experiment table FAMILY
"""

from __future__ import annotations

from fedalign.lab.experiments import dp, fedcmp, reliability, world_check
from fedalign.lab.experiments.family import Family
from fedalign.protocol.errors import ConfigError

__all__ = ["FAMILIES", "Family", "family"]

FAMILIES: dict[str, Family] = {f.name: f for f in (fedcmp.FAMILY, reliability.FAMILY, dp.FAMILY, world_check.FAMILY)}


def family(name: str) -> Family:
    """The family called ``name``; an unknown name is one ConfigError listing the known ones."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown experiment family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
