"""Config schemas (pydantic) for the TOML files users write, and one loader that names file and field.

``load_config(path, Schema, overrides)`` reads TOML, applies dotted ``section.field=value``
overrides (from the command line), validates, and turns every problem into one
:class:`~fedalign.protocol.errors.ConfigError` line: ``silo.toml: privacy.epsilon: Input should be ...``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Mapping, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from fedalign.protocol.errors import ConfigError

__all__ = ["StrictModel", "FileConfig", "SchemeName", "load_config", "apply_overrides", "parse_override",
           "validate_config"]

M = TypeVar("M", bound=BaseModel)


def _registered_scheme(name: str) -> str:
    from fedalign.crypto.schemes import SCHEMES

    if name not in SCHEMES:
        raise ValueError(f"{name!r} is not a secure-sum scheme; expected one of {sorted(SCHEMES)}")
    return name


SchemeName = Annotated[str, AfterValidator(_registered_scheme)]
"""A name in crypto's scheme table (fedalign.crypto.schemes): secagg, ckks, plain, or one registered."""


class StrictModel(BaseModel):
    """Base for every section: unknown keys are errors (a typo must not be ignored silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class FileConfig(StrictModel):
    """Base of a whole config file: relative paths resolve against the file's directory."""

    base_dir: Path = Path(".")

    def resolve(self, p: Path | None) -> Path | None:
        """``p`` relative to the config file's directory (``None`` stays ``None``)."""
        if p is None:
            return None
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def out_dir(self) -> Path:
        return self.resolve(self.output.dir)  # type: ignore[attr-defined,return-value]


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=1"`` -> ``("a.b", 1)``; the value is read as a TOML value, else kept as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected section.field=value")
    try:
        value = tomllib.loads(f"x = {raw.strip()}")["x"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted keys set (``None`` values are skipped)."""
    out = _deepcopy(data)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
            node = nxt
        node[leaf] = value
    return out


def _deepcopy(d: Any) -> Any:
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def _loc(err: Mapping[str, Any]) -> str:
    return ".".join(str(p) for p in err.get("loc", ())) or "(top level)"


def validate_config(data: Mapping[str, Any], schema: type[M], *, source: str) -> M:
    """Validate ``data`` against ``schema``; errors name ``source`` and every bad field."""
    try:
        return schema.model_validate(data, context={"source": source})
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            got = err.get("input")
            shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
            parts.append(f"{_loc(err)}: {err['msg']}{shown}")
        raise ConfigError(f"{source}: " + "; ".join(parts)) from None


def load_config(path: str | Path | None, schema: type[M], overrides: Mapping[str, Any] | None = None) -> M:
    """Read a TOML file (or only defaults when ``path`` is None), apply overrides, validate.

    Relative paths inside the file are left to the schema, which receives the file's directory
    as ``base_dir`` when it declares one.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read config: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        if "base_dir" in schema.model_fields and "base_dir" not in data:
            data["base_dir"] = str(p.resolve().parent)
    data = apply_overrides(data, overrides or {})
    return validate_config(data, schema, source=source)
