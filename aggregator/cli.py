"""``aggregator``: serve a federation (``serve``), make its CURVE keys (``keygen``), report a run
(``status``). In-process experiments are ``fedalign-lab simulate`` (:mod:`fedalign.lab.cli`).
The commands parse and print; the run is composed in :mod:`fedalign.aggregator.app`.

Every command prints one clear line and exits non-zero on bad input (``fedalign.host.cli_errors``);
``--debug`` shows tracebacks.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from fedalign.host.cli_errors import run_cli
from fedalign.host.process import apply_process_defaults

__all__ = ["app", "main", "build_app"]

log = logging.getLogger(__name__)


def _debug_option() -> Any:
    return typer.Option(False, "--debug", help="show tracebacks")


def serve(
    config: Path = typer.Option(..., "--config", "-c", help="aggregator.toml"),
    insecure_plaintext: bool = typer.Option(
        False, "--insecure-plaintext",
        help="INSECURE: allow plaintext transport / plain sums (the config's site policy must allow it too)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a config field: section.field=value"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
    policy: Optional[Path] = typer.Option(None, "--policy", help="the operator's site policy.toml (policy)"),
    debug: bool = _debug_option(),
) -> None:
    """Run the federation in aggregator.toml (resuming from its last checkpoint)."""
    from fedalign.protocol.config import parse_override

    def go():
        overrides = dict(parse_override(s) for s in (set_ or []))
        if policy is not None:
            overrides["policy"] = str(policy.resolve())
        from fedalign.aggregator.app import serve_from_config

        final = serve_from_config(config, insecure_plaintext=insecure_plaintext, quiet=quiet, overrides=overrides)
        typer.echo(f"done: {final.round} rounds committed")

    run_cli(go, debug=debug)


def init(
    model_card: list[Path] = typer.Option(..., "--model-card", help="a silo's model card (`silo describe --out`); repeatable"),
    out: Path = typer.Option(Path("init_projector.safetensors"), "--out", help="θ_0 file for [init] params"),
    seed: int = typer.Option(0, "--seed", help="initialisation seed (public)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing file"),
    debug: bool = _debug_option(),
) -> None:
    """Make the initial projector θ_0 from the silos' model cards (they must agree on its sizes)."""

    def go():
        from fedalign.aggregator.app import init_projector

        r = init_projector(list(model_card), out, seed=seed, overwrite=overwrite)
        typer.echo(f"wrote {r['path']}: {r['projector']} {r['d_vision']} -> {r['d_model']} (vision "
                   f"{r['vision_tower']!r}, LM {r['llm']!r}); set [init] params = \"{r['path']}\" in aggregator.toml")

    run_cli(go, debug=debug)


def keygen(
    out: Path = typer.Option(Path("keys"), "--out", help="directory for the key files"),
    name: str = typer.Option("aggregator", "--name", help="file name stem"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing key files"),
    debug: bool = _debug_option(),
) -> None:
    """Write the aggregator's CURVE key pair (<name>.key public, <name>.key_secret) and its Ed25519
    identity (<name>.identity), all 0600, and print the roster's [aggregator] entry."""
    from fedalign.aggregator.audit import keygen_aggregator

    def go():
        pub, sec, ident, entry = keygen_aggregator(out, name, overwrite=overwrite)
        from fedalign.protocol.keys import load_public

        typer.echo(f"wrote {pub}, {sec} and {ident} (mode 0600)")
        typer.echo(f"public key (give to every silo as federation.aggregator_public_key): {load_public(pub)}")
        typer.echo(f"set server.identity_key = \"{ident}\" in aggregator.toml, and add this to every roster.toml "
                   "(silos and auditors check the aggregator's signed ledger with it):")
        typer.echo(entry, nl=False)

    run_cli(go, debug=debug)


def status(
    config: Path = typer.Option(..., "--config", "-c", help="aggregator.toml"),
    debug: bool = _debug_option(),
) -> None:
    """Show the committed rounds of the run in aggregator.toml, from its checkpoint."""
    from fedalign.aggregator.checkpoint import CheckpointStore
    from fedalign.protocol.config.aggregator import load_aggregator_config

    def go():
        cfg = load_aggregator_config(config)
        state = CheckpointStore(cfg.out_dir / "checkpoints").load()
        if state is None:
            typer.echo(f"no checkpoint in {cfg.out_dir / 'checkpoints'}: 0 of {cfg.run.rounds} rounds")
            return
        typer.echo(f"{state.round} of {cfg.run.rounds} rounds committed ({state.meta.get('strategy')}, "
                   f"{state.meta.get('scheme')})")
        for rec in state.history[-10:]:
            typer.echo(f"  round {rec['round']}: survivors {', '.join(rec['survivors'])}"
                       + (f"; dropped {', '.join(rec['dropped'])}" if rec.get("dropped") else "")
                       + f"; {rec.get('seconds', math.nan):.1f}s")

    run_cli(go, debug=debug)


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
    app.command("init")(init)
    app.command("serve")(serve)
    app.command("keygen")(keygen)
    app.command("status")(status)
    from fedalign.aggregator.audit import app as audit_app

    app.add_typer(audit_app, name="audit")
    return app


def main() -> None:
    apply_process_defaults(torch_too=False)  # offline hubs and one thread, before anything loads
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    build_app()()


def __getattr__(name: str) -> Any:  # ``aggregator.cli.app`` is built on first use
    if name == "app":
        return build_app()
    raise AttributeError(name)

if __name__ == "__main__":
    main()
