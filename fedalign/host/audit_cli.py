"""The ``audit`` command group that ``silo`` and ``aggregator`` both mount (typer).

Every command verifies through the one verifier, :func:`fedalign.compliance.verifier.verify_ledger`:

``audit verify [LEDGER]`` hash chain, signatures (``--public-key``, or the key ``--config`` names),
                         heads (``--head``, ``--witness-ledger``, or the peers' ledgers the config's
                         ``[audit]`` names, each verified first), closing receipts, no unwitnessed
                         entry; the first bad entry named; exit 0 intact, 11 broken, torn or
                         unwitnessed (the CLI exit table's CheckpointError); ``--allow-torn-tail``
                         accepts a crash-torn last line, ``--allow-unwitnessed-tail`` a run that
                         ended before its ledger was closed
``audit show``           which checks ran, then settings against policy, ε against budget, what left per
                         round, transport, the threat model of the chosen mode
``audit report``         the same as terminal tables, ``--json FILE``, ``--html FILE`` (one self-contained
                         page); exit 6 when the independent ε check disagrees by over 2 %
``audit fingerprint KEY`` a CURVE public key's fingerprint, as policies name keys

A signed ledger verified without a key says so ("signatures present ... but NOT checked"); a
ledger re-signed with another key is refused (exit 11) whenever the owner's key is known.
"""

from __future__ import annotations

from dataclasses import dataclass
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
_PeerKey = typer.Option(None, "--peer-key", help="with --witness-ledger: the peer's Ed25519 identity (64 hex digits): "
                        "its ledger and the closing receipt must carry its signatures")
_Unwitnessed = typer.Option(False, "--allow-unwitnessed-tail",
                            help="accept entries of a federated run that no peer witnessed (a run that ended before "
                                 "its ledger was closed: a crash, a lost connection); without it they exit 11")

KeyOfConfig = Callable[[Path], "tuple[bytes | None, str]"]


@dataclass(frozen=True)
class Peer:
    """A peer's ledger an auditor was given, which witnesses the one being verified."""

    name: str  # the peer as the owner's ledger names it ("aggregator", or a silo)
    ledger: Path | None  # None: not given (its key still checks the receipts in the owner's ledger)
    key: bytes | None  # its Ed25519 identity: its own ledger and its receipts are checked against it
    key_source: str = ""


# the owner's name as peers name it, and the peers' ledgers, as a config file finds them
PeersOfConfig = Callable[[Path], "tuple[str | None, list[Peer]]"]


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


def _peer_evidence(peers: list[Peer], owner: str | None) -> tuple[list, list[int], bytes | None]:
    """The heads of ``owner``'s ledger that the peers' ledgers witnessed, the entries they gave a
    closing receipt for, and the key receipts are checked against. Each peer's ledger is verified
    first (with its key, when known): a broken one witnesses nothing (LedgerError, exit 11)."""
    from fedalign.protocol.errors import ConfigError
    from fedalign.compliance.entries import LedgerError
    from fedalign.compliance.verifier import verify_ledger
    from fedalign.compliance.witness import final_heads, witnessed_heads

    heads: list = []
    receipted: list[int] = []
    receipt_key = None
    for peer in peers:
        if peer.name == "aggregator" and peer.key is not None:
            receipt_key = peer.key
        if peer.ledger is None:
            continue
        if not owner:
            raise ConfigError("--witness-ledger needs --node (this ledger's owner as the peer names it)")
        if not peer.ledger.exists():
            raise ConfigError(f"{peer.ledger}: the {peer.name} ledger given as witness is not found")
        own = verify_ledger(peer.ledger, public_key=peer.key, key_source=peer.key_source, allow_torn_tail=True,
                            allow_unwitnessed_tail=True)
        if not own.ok:
            raise LedgerError(f"the witness ledger of {peer.name} is itself not intact, so its heads prove nothing: "
                              f"{own.line()}", index=own.first_bad, line=own.first_bad_line)
        found = [h for h in witnessed_heads(peer.ledger, owner) if h.index >= 0]
        if not found:
            raise ConfigError(f"{peer.ledger}: the {peer.name} ledger holds no head witnessed from {owner!r}")
        heads += found
        receipted += final_heads(peer.ledger, owner)
    return heads, receipted, receipt_key


def _verified(path: Path, heads: list[str] | None, key: bytes | None = None, key_source: str | None = None,
              peers: list[Peer] | None = None, *, owner: str | None = None, receipt_key: bytes | None = None,
              allow_torn_tail: bool = False, allow_unwitnessed_tail: bool = False, key_hint: str | None = None):
    """Run the one verifier (:func:`fedalign.compliance.verifier.verify_ledger`); raise LedgerError (exit 11)
    unless the verdict is intact (or a torn or unwitnessed tail the caller accepted)."""
    from fedalign.compliance.audit import parse_head, verify_ledger
    from fedalign.protocol.errors import ConfigError

    if not path.exists():
        raise ConfigError(f"{path}: ledger not found")
    try:
        recorded = [parse_head(h) for h in heads or []]
    except ValueError as e:
        raise ConfigError(f"--head: {e}") from None
    peer_heads, receipted, peer_receipt_key = _peer_evidence(peers or [], owner)
    res = verify_ledger(path, witnessed=recorded, peer_heads=peer_heads, public_key=key, key_source=key_source,
                        allow_torn_tail=allow_torn_tail, allow_unwitnessed_tail=allow_unwitnessed_tail, owner=owner,
                        peer_key=receipt_key or peer_receipt_key, receipted=receipted)
    if key_hint:
        res.key_hint = key_hint
    from fedalign.compliance.entries import LedgerError

    try:
        res.raise_for_status()
    except LedgerError as e:  # the verdict line (what was checked, what failed) is the one line an auditor reads
        raise type(e)(res.line(), index=e.index, line=e.line) from None
    return res


def make_audit_app(role: str, ledger_of_config: Callable[[Path], Path],
                   key_of_config: KeyOfConfig | None = None, peers_of_config: PeersOfConfig | None = None) -> typer.Typer:
    """The ``audit`` group for ``role`` (silo or aggregator); ``ledger_of_config`` finds the ledger
    named by a config file, ``key_of_config`` (if given) the ledger owner's Ed25519 public key and
    where it came from (``(None, why not)`` when the config names none), ``peers_of_config`` the
    owner's name as peers know it and the peers' ledgers the config names (``[audit]``)."""
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

    def peers(config: Optional[Path], witness_ledger: Optional[Path], node: Optional[str],
              peer_key: Optional[str]) -> tuple[str | None, list[Peer]]:
        """The owner's name and the witnesses: --witness-ledger (with --node, --peer-key) or the config's [audit]."""
        owner, found = (None, [])
        if config is not None and peers_of_config is not None:
            owner, found = peers_of_config(config)
        if witness_ledger is not None:
            name = "aggregator" if role == "silo" else "silo"
            key = _public_key(peer_key) if peer_key is not None else next(
                (p.key for p in found if p.name == name), None)
            found = [Peer(name, witness_ledger, key, "--peer-key" if peer_key is not None else "the config")]
        return node or owner, found

    def verified(config: Optional[Path], ledger: Optional[Path], head: list[str] | None, public_key: Optional[str],
                 witness_ledger: Optional[Path], node: Optional[str], allow_torn_tail: bool,
                 peer_key: Optional[str] = None, allow_unwitnessed_tail: bool = False):
        path = ledger_path(config, ledger)
        key, source, hint = owner_key(config, public_key)
        owner, witnesses = peers(config, witness_ledger, node, peer_key)
        return path, _verified(path, head, key, source, witnesses, owner=owner, allow_torn_tail=allow_torn_tail,
                               allow_unwitnessed_tail=allow_unwitnessed_tail, key_hint=hint)

    def summary(config: Optional[Path], ledger: Optional[Path], head: list[str] | None, public_key: Optional[str],
                witness_ledger: Optional[Path], node: Optional[str], allow_torn_tail: bool,
                peer_key: Optional[str] = None, allow_unwitnessed_tail: bool = False) -> dict[str, Any]:
        from fedalign.compliance.audit import read_entries, summarize

        path, res = verified(config, ledger, head, public_key, witness_ledger, node, allow_torn_tail, peer_key,
                             allow_unwitnessed_tail)
        return summarize(read_entries(path), verify=res)

    ConfigOpt = typer.Option(None, "--config", "-c", help=f"{role}.toml (finds the ledger and the owner's key)")
    LedgerOpt = typer.Option(None, "--ledger", help="ledger.jsonl (instead of --config)")

    @app.command()
    def verify(ledger: Optional[Path] = typer.Argument(None, help="ledger.jsonl (default: the one --config names)"),
               config: Optional[Path] = ConfigOpt, head: Optional[list[str]] = _Head,
               public_key: Optional[str] = _Key, witness_ledger: Optional[Path] = _WitnessLedger,
               node: Optional[str] = _Node, peer_key: Optional[str] = _PeerKey, allow_torn_tail: bool = _Torn,
               allow_unwitnessed_tail: bool = _Unwitnessed, debug: bool = _Debug) -> None:
        """Check the hash chain, the signatures (with --public-key or --config), heads recorded by you
        (--head) or by a peer (--witness-ledger, or the peers' ledgers --config names), the closing
        receipts, and that no entry of a federated run went unwitnessed; name the first bad entry.
        Exit 0 intact, 11 broken, torn or unwitnessed (see --allow-torn-tail, --allow-unwitnessed-tail)."""
        run_cli(lambda: typer.echo(verified(config, ledger, head, public_key, witness_ledger, node,
                                            allow_torn_tail, peer_key, allow_unwitnessed_tail)[1].line()), debug=debug)

    @app.command()
    def show(config: Optional[Path] = ConfigOpt, ledger: Optional[Path] = LedgerOpt,
             head: Optional[list[str]] = _Head, public_key: Optional[str] = _Key,
             witness_ledger: Optional[Path] = _WitnessLedger, node: Optional[str] = _Node,
             peer_key: Optional[str] = _PeerKey, allow_torn_tail: bool = _Torn,
             allow_unwitnessed_tail: bool = _Unwitnessed, debug: bool = _Debug) -> None:
        """Which checks ran on the ledger, then settings against policy, ε against budget, what left per
        round, transport, threat model. Refuses a ledger that fails verification (exit 11)."""
        from fedalign.compliance.audit_report import render_text

        run_cli(lambda: typer.echo(render_text(summary(config, ledger, head, public_key, witness_ledger, node,
                                                       allow_torn_tail, peer_key, allow_unwitnessed_tail)), nl=False),
                debug=debug)

    @app.command()
    def report(config: Optional[Path] = ConfigOpt, ledger: Optional[Path] = LedgerOpt,
               head: Optional[list[str]] = _Head, public_key: Optional[str] = _Key,
               witness_ledger: Optional[Path] = _WitnessLedger, node: Optional[str] = _Node,
               peer_key: Optional[str] = _PeerKey, allow_torn_tail: bool = _Torn,
               allow_unwitnessed_tail: bool = _Unwitnessed,
               json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON here"),
               html_out: Optional[Path] = typer.Option(None, "--html", help="write one self-contained HTML file here"),
               debug: bool = _Debug) -> None:
        """Tables, JSON, HTML with the ε/bytes plot and the DP statement (ε checked by dp_accounting), each
        opening with which checks ran. Exit 0; 11 when the ledger fails verification; 6 when the
        independent ε disagrees by over 2%."""

        def body() -> None:
            from fedalign.host.atomic import atomic_write_text
            from fedalign.compliance.audit_report import render_html, render_json, render_text
            from fedalign.protocol.errors import PrivacyError

            s = summary(config, ledger, head, public_key, witness_ledger, node, allow_torn_tail, peer_key,
                        allow_unwitnessed_tail)
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
        from fedalign.compliance.policy import key_fingerprint

        run_cli(lambda: typer.echo(key_fingerprint(load_public(key))), debug=debug)

    return app
