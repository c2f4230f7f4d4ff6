"""The ``audit`` command group that ``silo`` and ``aggregator`` both mount (typer).

``audit verify LEDGER``  hash chain (+ witnessed heads with ``--head``); the first bad entry named;
                         exit 0 intact, 11 broken (the CLI exit table's CheckpointError)
``audit show``           settings against policy, ε against budget, what left per round, transport,
                         the threat model of the chosen mode
``audit report``         terminal tables, ``--json FILE``, ``--html FILE`` (one self-contained page);
                         exit 6 when the independent ε check disagrees by over 2 %
``audit fingerprint KEY`` a CURVE public key's fingerprint, as policies name keys
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

__all__ = ["make_audit_app"]

_Head = typer.Option(None, "--head", help="a witnessed head SEQ:SHA256 (as verify prints it); repeatable")
_Key = typer.Option(None, "--public-key", help="the ledger owner's Ed25519 identity (64 hex digits, as in the "
                                               "roster): every entry must carry its valid signature")
_Debug = typer.Option(False, "--debug", help="show tracebacks")


def _signature_check(public_key: str | None):
    """The per-entry check ``verify_ledger`` calls, for the owner's hex Ed25519 key (or None)."""
    from fedalign.protocol.errors import ConfigError
    from fedalign.protocol.ledger import entry_signature_ok

    if public_key is None:
        return None
    try:
        key = bytes.fromhex(public_key.removeprefix("ed25519:"))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"--public-key: expected 64 hex digits (an Ed25519 public key), got {public_key[:80]!r}")

    def check(index: int, entry: dict, raw: bytes) -> str | None:
        if "sig" not in entry:
            return "not signed (written without the owner's identity, or the signature was removed)"
        return None if entry_signature_ok(entry, key) else "does not match the entry's content (edited)"

    return check


_WitnessLedger = typer.Option(None, "--witness-ledger", help="a peer's ledger (the aggregator's for a silo, a "
                              "silo's for the aggregator): every head of this ledger it witnessed must still be there")
_Node = typer.Option(None, "--node", help="with --witness-ledger: this ledger's owner as the peer names it "
                     "(the silo's name; 'aggregator' for the aggregator)")


def _peer_heads(witness_ledger: Path | None, node: str | None) -> list[tuple[int, str]]:
    """The heads of ``node``'s ledger that the peer's ledger recorded (DESIGN §10's witnessed heads)."""
    from fedalign.protocol.errors import ConfigError
    from fedalign.protocol.ledger import witnessed_heads

    if witness_ledger is None:
        return []
    if not node:
        raise ConfigError("--witness-ledger needs --node (this ledger's owner as the peer names it)")
    if not witness_ledger.exists():
        raise ConfigError(f"--witness-ledger: {witness_ledger} not found")
    heads = [(h.index, h.digest) for h in witnessed_heads(witness_ledger, node) if h.index >= 0]
    if not heads:
        raise ConfigError(f"--witness-ledger: {witness_ledger} holds no head witnessed from {node!r}")
    return heads


def _verified(path: Path, heads: list[str] | None, public_key: str | None = None,
              peer_heads: list[tuple[int, str]] | None = None):
    from fedalign.protocol.audit import parse_head, verify_ledger
    from fedalign.protocol.errors import CheckpointError, ConfigError

    if not path.exists():
        raise ConfigError(f"{path}: ledger not found")
    try:
        witnessed = [parse_head(h) for h in heads or []] + list(peer_heads or [])
    except ValueError as e:
        raise ConfigError(f"--head: {e}") from None
    res = verify_ledger(path, witnessed=witnessed, signature_check=_signature_check(public_key))
    if not res.ok:
        raise CheckpointError(res.line())
    return res


def make_audit_app(role: str, ledger_of_config: Callable[[Path], Path]) -> typer.Typer:
    """The ``audit`` group for ``role`` (silo or aggregator); ``ledger_of_config`` finds the ledger
    named by a config file."""
    from fedalign.host.cli_errors import run_cli

    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help=f"Audit this {role}'s ledger: verify it, show settings against policy, write a report.")

    def ledger_path(config: Optional[Path], ledger: Optional[Path]) -> Path:
        if ledger is not None:
            return ledger
        if config is None:
            from fedalign.protocol.errors import ConfigError

            raise ConfigError("give --ledger LEDGER or --config CONFIG")
        return ledger_of_config(config)

    def summary(config: Optional[Path], ledger: Optional[Path], head: list[str] | None) -> dict[str, Any]:
        from fedalign.protocol.audit import read_entries, summarize

        path = ledger_path(config, ledger)
        res = _verified(path, head)
        return summarize(read_entries(path), verify=res)

    ConfigOpt = typer.Option(None, "--config", "-c", help=f"{role}.toml (finds the ledger)")
    LedgerOpt = typer.Option(None, "--ledger", help="ledger.jsonl (instead of --config)")

    @app.command()
    def verify(ledger: Path = typer.Argument(..., help="ledger.jsonl"), head: Optional[list[str]] = _Head,
               public_key: Optional[str] = _Key, witness_ledger: Optional[Path] = _WitnessLedger,
               node: Optional[str] = _Node, debug: bool = _Debug) -> None:
        """Check the hash chain (signatures with --public-key; heads recorded by you with --head or by
        a peer with --witness-ledger); name the first bad entry. Exit 0 intact, 11 broken."""
        run_cli(lambda: typer.echo(_verified(ledger, head, public_key, _peer_heads(witness_ledger, node)).line()),
                debug=debug)

    @app.command()
    def show(config: Optional[Path] = ConfigOpt, ledger: Optional[Path] = LedgerOpt,
             head: Optional[list[str]] = _Head, debug: bool = _Debug) -> None:
        """Settings against policy, ε against budget, what left per round, transport, threat model."""
        from fedalign.protocol.audit_report import render_text

        run_cli(lambda: typer.echo(render_text(summary(config, ledger, head)), nl=False), debug=debug)

    @app.command()
    def report(config: Optional[Path] = ConfigOpt, ledger: Optional[Path] = LedgerOpt,
               head: Optional[list[str]] = _Head,
               json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON here"),
               html_out: Optional[Path] = typer.Option(None, "--html", help="write one self-contained HTML file here"),
               debug: bool = _Debug) -> None:
        """Tables, JSON, HTML with the ε/bytes plot and the DP statement (ε checked by dp_accounting).
        Exit 0; 11 when the ledger is broken; 6 when the independent ε disagrees by over 2%."""

        def body() -> None:
            from fedalign.host.atomic import atomic_write_text
            from fedalign.protocol.audit_report import render_html, render_json, render_text
            from fedalign.protocol.errors import PrivacyError

            s = summary(config, ledger, head)
            typer.echo(render_text(s), nl=False)
            if json_out is not None:
                atomic_write_text(json_out, render_json(s))
                typer.echo(f"wrote {json_out}")
            if html_out is not None:
                atomic_write_text(html_out, render_html(s))
                typer.echo(f"wrote {html_out}")
            dp = s.get("dp")
            if dp is not None and not dp["independent"]["agrees"]:
                ind = dp["independent"]
                raise PrivacyError(f"the ledger's epsilon {dp['epsilon']:.4g} and dp_accounting's "
                                   f"{ind[ind['compared_with']]:.4g} differ by "
                                   f"{100 * ind['relative_difference']:.2f}% (over 2%)")

        run_cli(body, debug=debug)

    @app.command()
    def fingerprint(key: Path = typer.Argument(..., help="a CURVE public key file (e.g. keys/aggregator.key)"),
                    debug: bool = _Debug) -> None:
        """Print a CURVE public key's fingerprint, as policy.toml's key lists want it."""
        from fedalign.protocol.keys import load_public
        from fedalign.protocol.policy import key_fingerprint

        run_cli(lambda: typer.echo(key_fingerprint(load_public(key))), debug=debug)

    return app
