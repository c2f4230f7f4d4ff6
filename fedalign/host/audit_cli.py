"""The ``audit`` command group that ``silo`` and ``aggregator`` both mount (typer).

Every command verifies through the one verifier, :func:`fedalign.protocol.ledger.verify_ledger`:

``audit verify [LEDGER]`` hash chain, signatures (``--public-key``, or the key ``--config`` names),
                         heads (``--head``, ``--witness-ledger``), the tail; the first bad entry named;
                         exit 0 intact, 11 broken or torn (the CLI exit table's CheckpointError);
                         ``--allow-torn-tail`` accepts a crash-torn last line
``audit show``           which checks ran, then settings against policy, ε against budget, what left per
                         round, transport, the threat model of the chosen mode
``audit report``         the same as terminal tables, ``--json FILE``, ``--html FILE`` (one self-contained
                         page); exit 6 when the independent ε check disagrees by over 2 %
``audit fingerprint KEY`` a CURVE public key's fingerprint, as policies name keys

A signed ledger verified without a key says so ("signatures present ... but NOT checked"); a
ledger re-signed with another key is refused (exit 11) whenever the owner's key is known.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

__all__ = ["make_audit_app"]

_Head = typer.Option(None, "--head", help="a head SEQ:SHA256 you recorded (as verify prints it); repeatable")
_Key = typer.Option(None, "--public-key", help="the ledger owner's Ed25519 identity (64 hex digits, as in the "
                                               "roster): every entry must carry its valid signature")
_Torn = typer.Option(False, "--allow-torn-tail", help="accept an incomplete last line (a crash mid-write): the "
                                                     "committed entries before it are verified; without this flag "
                                                     "a torn tail exits 11")
_Debug = typer.Option(False, "--debug", help="show tracebacks")
_WitnessLedger = typer.Option(None, "--witness-ledger", help="a peer's ledger (the aggregator's for a silo, a "
                              "silo's for the aggregator): every head of this ledger it witnessed must still be there "
                              "(and, with a key, carry the owner's signature)")
_Node = typer.Option(None, "--node", help="with --witness-ledger: this ledger's owner as the peer names it "
                     "(the silo's name; 'aggregator' for the aggregator)")

KeyOfConfig = Callable[[Path], "tuple[bytes | None, str]"]


def _public_key(public_key: str) -> bytes:
    """The owner's hex Ed25519 key given with --public-key (``ed25519:`` prefix allowed)."""
    from fedalign.protocol.errors import ConfigError

    try:
        key = bytes.fromhex(public_key.removeprefix("ed25519:"))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"--public-key: expected 64 hex digits (an Ed25519 public key), got {public_key[:80]!r}")
    return key


def _peer_heads(witness_ledger: Path | None, node: str | None) -> list:
    """The heads of ``node``'s ledger that the peer's ledger recorded, with their signatures."""
    from fedalign.protocol.errors import ConfigError
    from fedalign.protocol.ledger import witnessed_heads

    if witness_ledger is None:
        return []
    if not node:
        raise ConfigError("--witness-ledger needs --node (this ledger's owner as the peer names it)")
    if not witness_ledger.exists():
        raise ConfigError(f"--witness-ledger: {witness_ledger} not found")
    heads = [h for h in witnessed_heads(witness_ledger, node) if h.index >= 0]
    if not heads:
        raise ConfigError(f"--witness-ledger: {witness_ledger} holds no head witnessed from {node!r}")
    return heads


def _verified(path: Path, heads: list[str] | None, key: bytes | None = None, key_source: str | None = None,
              peer_heads: list | None = None, *, allow_torn_tail: bool = False, key_hint: str | None = None):
    """Run the one verifier (:func:`fedalign.protocol.ledger.verify_ledger`); raise LedgerError (exit 11)
    unless the verdict is intact (or a torn tail the caller accepted)."""
    from fedalign.protocol.audit import parse_head, verify_ledger
    from fedalign.protocol.errors import ConfigError
    from fedalign.protocol.ledger import LedgerError, LedgerTornTail, TORN_TAIL

    if not path.exists():
        raise ConfigError(f"{path}: ledger not found")
    try:
        recorded = [parse_head(h) for h in heads or []]
    except ValueError as e:
        raise ConfigError(f"--head: {e}") from None
    res = verify_ledger(path, witnessed=recorded, peer_heads=peer_heads or [], public_key=key, key_source=key_source,
                        allow_torn_tail=allow_torn_tail)
    if key_hint:
        res.key_hint = key_hint
    if not res.ok:
        cls = LedgerTornTail if res.status == TORN_TAIL else LedgerError
        raise cls(res.line(), index=res.first_bad, line=res.first_bad_line)
    return res


def make_audit_app(role: str, ledger_of_config: Callable[[Path], Path],
                   key_of_config: KeyOfConfig | None = None) -> typer.Typer:
    """The ``audit`` group for ``role`` (silo or aggregator); ``ledger_of_config`` finds the ledger
    named by a config file, ``key_of_config`` (if given) the ledger owner's Ed25519 public key and
    where it came from (``(None, why not)`` when the config names none)."""
    from fedalign.host.cli_errors import run_cli

    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help=f"Audit this {role}'s ledger: verify it, show settings against policy, write a report.")

    def ledger_path(config: Optional[Path], ledger: Optional[Path]) -> Path:
        if ledger is not None:
            return ledger
        if config is None:
            from fedalign.protocol.errors import ConfigError

            raise ConfigError("give LEDGER (--ledger) or --config CONFIG")
        return ledger_of_config(config)

    def owner_key(config: Optional[Path], public_key: Optional[str]) -> tuple[bytes | None, str | None, str | None]:
        """(key, its source, the hint when there is none): --public-key wins over the config's key."""
        if public_key is not None:
            return _public_key(public_key), "--public-key", None
        if config is not None and key_of_config is not None:
            key, where = key_of_config(config)
            if key is not None:
                return key, where, None
            return None, None, f"{where}; pass --public-key"
        if config is not None:
            return None, None, f"{config} names no key for this {role}'s ledger; pass --public-key"
        return None, None, None

    def verified(config: Optional[Path], ledger: Optional[Path], head: list[str] | None, public_key: Optional[str],
                 witness_ledger: Optional[Path], node: Optional[str], allow_torn_tail: bool):
        path = ledger_path(config, ledger)
        key, source, hint = owner_key(config, public_key)
        return path, _verified(path, head, key, source, _peer_heads(witness_ledger, node),
                               allow_torn_tail=allow_torn_tail, key_hint=hint)

    def summary(config: Optional[Path], ledger: Optional[Path], head: list[str] | None, public_key: Optional[str],
                witness_ledger: Optional[Path], node: Optional[str], allow_torn_tail: bool) -> dict[str, Any]:
        from fedalign.protocol.audit import read_entries, summarize

        path, res = verified(config, ledger, head, public_key, witness_ledger, node, allow_torn_tail)
        return summarize(read_entries(path), verify=res)

    ConfigOpt = typer.Option(None, "--config", "-c", help=f"{role}.toml (finds the ledger and the owner's key)")
    LedgerOpt = typer.Option(None, "--ledger", help="ledger.jsonl (instead of --config)")

    @app.command()
    def verify(ledger: Optional[Path] = typer.Argument(None, help="ledger.jsonl (default: the one --config names)"),
               config: Optional[Path] = ConfigOpt, head: Optional[list[str]] = _Head,
               public_key: Optional[str] = _Key, witness_ledger: Optional[Path] = _WitnessLedger,
               node: Optional[str] = _Node, allow_torn_tail: bool = _Torn, debug: bool = _Debug) -> None:
        """Check the hash chain, the signatures (with --public-key or --config), heads recorded by you
        (--head) or by a peer (--witness-ledger), and the tail; name the first bad entry.
        Exit 0 intact, 11 broken or torn (a torn tail exits 0 with --allow-torn-tail)."""
        run_cli(lambda: typer.echo(verified(config, ledger, head, public_key, witness_ledger, node,
                                            allow_torn_tail)[1].line()), debug=debug)

    @app.command()
    def show(config: Optional[Path] = ConfigOpt, ledger: Optional[Path] = LedgerOpt,
             head: Optional[list[str]] = _Head, public_key: Optional[str] = _Key,
             witness_ledger: Optional[Path] = _WitnessLedger, node: Optional[str] = _Node,
             allow_torn_tail: bool = _Torn, debug: bool = _Debug) -> None:
        """Which checks ran on the ledger, then settings against policy, ε against budget, what left per
        round, transport, threat model. Refuses a ledger that fails verification (exit 11)."""
        from fedalign.protocol.audit_report import render_text

        run_cli(lambda: typer.echo(render_text(summary(config, ledger, head, public_key, witness_ledger, node,
                                                       allow_torn_tail)), nl=False), debug=debug)

    @app.command()
    def report(config: Optional[Path] = ConfigOpt, ledger: Optional[Path] = LedgerOpt,
               head: Optional[list[str]] = _Head, public_key: Optional[str] = _Key,
               witness_ledger: Optional[Path] = _WitnessLedger, node: Optional[str] = _Node,
               allow_torn_tail: bool = _Torn,
               json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON here"),
               html_out: Optional[Path] = typer.Option(None, "--html", help="write one self-contained HTML file here"),
               debug: bool = _Debug) -> None:
        """Tables, JSON, HTML with the ε/bytes plot and the DP statement (ε checked by dp_accounting), each
        opening with which checks ran. Exit 0; 11 when the ledger fails verification; 6 when the
        independent ε disagrees by over 2%."""

        def body() -> None:
            from fedalign.host.atomic import atomic_write_text
            from fedalign.protocol.audit_report import render_html, render_json, render_text
            from fedalign.protocol.errors import PrivacyError

            s = summary(config, ledger, head, public_key, witness_ledger, node, allow_torn_tail)
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
