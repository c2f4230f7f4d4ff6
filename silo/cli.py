"""The ``silo`` command line: ``silo train [--local] --config silo.toml``.

``--local`` trains without an aggregator and writes ``metrics.json`` and the exported
projector to ``output.dir`` (each file atomically, only after training and evaluation
succeeded). Without ``--local`` the networked runtime (``fedalign.silo.federation.run_federated``) runs.
The commands parse and print; runs are composed in :mod:`fedalign.silo.app`.
Errors print one line and exit non-zero (table in ``fedalign.host.cli_errors``); ``--debug`` adds the
traceback. ``build_app()`` registers the commands, as ``aggregator`` and ``fedalign-lab`` do.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from fedalign.host.cli_errors import run_cli
from fedalign.protocol.config import parse_override

__all__ = ["app", "build_app", "main", "config_overrides", "run_command", "load_config_from_cli"]

HELP = "A silo of federated multimodal alignment: train the projector on local data."

ConfigOpt = typer.Option(None, "--config", "-c", help="silo.toml (defaults apply when omitted)")
DebugOpt = typer.Option(False, "--debug", help="show tracebacks")
SetOpt = typer.Option(None, "--set", help="override any field: section.field=value (repeatable)")


def run_command(fn: Callable[[], Any], debug: bool) -> Any:
    """Run a command body with one torch thread, hubs offline, and the project's error table."""
    offline_by_default()
    return run_cli(fn, debug=debug)


def offline_by_default() -> None:
    """One thread per process and no downloads unless the environment says otherwise
    (HF_HUB_OFFLINE=0 allows them): a hub id that is not cached fails at once, with what to do."""
    import sys

    from fedalign.host.process import apply_process_defaults

    was = os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE")
    apply_process_defaults()
    hub = sys.modules.get("huggingface_hub.constants")  # already imported (in-process callers): apply it there too
    if hub is not None and was == (None, None):
        hub.HF_HUB_OFFLINE = True


def say(line: str) -> None:
    """A progress line on stderr (stdout keeps the results)."""
    typer.echo(line, err=True)


def config_overrides(sets: list[str] | None, **named: Any) -> dict[str, Any]:
    """Named CLI options (dotted field -> value, None = not given) plus ``--set`` pairs."""
    out = {k: v for k, v in named.items() if v is not None}
    for s in sets or []:
        k, v = parse_override(s)
        out[k] = v
    return out


def load_config_from_cli(config: Optional[Path], overrides: dict[str, Any]):
    from fedalign.protocol.config.silo import load_silo_config

    return load_silo_config(config, overrides)


def train(
    config: Optional[Path] = ConfigOpt,
    local: bool = typer.Option(False, "--local", help="train without an aggregator"),
    out: Optional[Path] = typer.Option(None, "--out", help="output.dir"),
    source: Optional[str] = typer.Option(None, help="data.source: world | files"),
    scenario: Optional[str] = typer.Option(None, help="data.world.scenario"),
    n_silos: Optional[int] = typer.Option(None, help="data.world.n_silos"),
    silo_index: Optional[int] = typer.Option(None, help="data.world.silo_index (omit: all data)"),
    alpha: Optional[float] = typer.Option(None, help="data.world.alpha"),
    world_seed: Optional[int] = typer.Option(None, help="data.world.seed"),
    seed: Optional[int] = typer.Option(None, help="train.seed"),
    rounds: Optional[int] = typer.Option(None, help="train.rounds"),
    dp: Optional[bool] = typer.Option(None, "--dp/--no-dp", help="privacy.enabled"),
    epsilon: Optional[float] = typer.Option(None, help="privacy.epsilon"),
    policy: Optional[Path] = typer.Option(None, "--policy", help="the site policy.toml to check against (policy)"),
    sets: Optional[list[str]] = SetOpt,
    insecure_plaintext: bool = typer.Option(
        False, "--insecure-plaintext",
        help="INSECURE: allow plaintext transport / plain sums (federation.allow_insecure_plaintext must allow it too)"),
    debug: bool = DebugOpt,
) -> None:
    """Train the projector: locally (``--local``) or as one silo of a federated run."""

    def body():
        ov = config_overrides(sets, **{
            "output.dir": str(out) if out else None, "data.source": source, "data.world.scenario": scenario,
            "data.world.n_silos": n_silos, "data.world.silo_index": silo_index, "data.world.alpha": alpha,
            "data.world.seed": world_seed, "train.seed": seed, "train.rounds": rounds,
            "privacy.enabled": dp, "privacy.epsilon": epsilon,
            "policy": str(policy.resolve()) if policy else None})
        cfg = load_config_from_cli(config, ov)
        from fedalign.silo.app import run_on_ranks, train_federated, train_local

        return run_on_ranks(cfg, lambda: train_local(cfg, say=say, echo=typer.echo) if local else
                            train_federated(cfg, say=say, echo=typer.echo, insecure_plaintext=insecure_plaintext))

    run_command(body, debug)


def describe(
    config: Optional[Path] = ConfigOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="write the model card here (JSON); default: print it"),
    sets: Optional[list[str]] = SetOpt,
    debug: bool = DebugOpt,
) -> None:
    """Print this silo's model card (projector kind and shapes, model ids and sizes) for `aggregator init`.

    Loads the frozen models named in [model] (no data is read, nothing is trained)."""

    def body():
        cfg = load_config_from_cli(config, config_overrides(sets))
        from fedalign.host.atomic import atomic_write_json
        from fedalign.silo.session import model_card

        card = model_card(cfg, notify=say)
        if out is None:
            typer.echo(json.dumps(card, indent=1))
        else:
            atomic_write_json(out, card)
            typer.echo(f"wrote {out}: {card['projector']} {card['d_vision']} -> {card['d_model']} "
                       f"(vision {card['vision_tower']!r}, LM {card['llm']!r}); give it to `aggregator init --model-card`")

    run_command(body, debug)


def reference(
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    debug: bool = DebugOpt,
) -> None:
    """The coordinator's public reference for Fed-CMP reliability "reference" (``aggregator serve`` starts it).

    Loads the silos' frozen models and the public set named in the config (privacy off), then
    answers θ_t -> Δ_ref requests on stdin, one JSON line each (docs/fedcmp.md)."""

    def body():
        import sys

        cfg = load_config_from_cli(config, config_overrides(sets))
        from fedalign.silo.reference import serve_requests

        serve_requests(cfg, sys.stdin, sys.stdout, notify=say)

    run_command(body, debug)


def public_basis(
    config: Optional[Path] = ConfigOpt,
    init: Path = typer.Option(..., "--init", help="θ_0: the run's initial projector (aggregator.toml init.params)"),
    rank: int = typer.Option(16, "--rank", min=1, help="directions per weight matrix"),
    out: Path = typer.Option(Path("public_basis.safetensors"), "--out", help="the basis file to write"),
    passes: int = typer.Option(1, "--passes", min=1, help="passes over the public set from θ_0"),
    sets: Optional[list[str]] = SetOpt,
    debug: bool = DebugOpt,
) -> None:
    """A public basis for DP training (silo.toml train.public_basis), from the coordinator's public set.

    The config is the reference's: the silos' models, the public set as data, privacy off.
    Trains --passes passes from θ_0 and writes, per weight matrix, the top --rank left singular
    directions of that movement (docs/silo.md). Give the file to every silo."""

    def body():
        cfg = load_config_from_cli(config, config_overrides(sets))
        from fedalign.silo.reference import make_public_basis, read_params
        from fedalign.silo.subspace import save_basis

        theta0, sha0 = read_params(init, "--init")
        bases = make_public_basis(cfg, theta0, rank, passes=passes, notify=say)
        sha = save_basis(bases, out, init_sha256=sha0, rank=str(rank), passes=str(passes))
        typer.echo(f"wrote {out} (sha256 {sha[:16]}…): rank {rank} for {', '.join(sorted(bases))}, from θ_0 "
                   f"{init} after {passes} public pass(es); set train.public_basis in every silo's silo.toml")

    run_command(body, debug)


def keygen(
    name: str = typer.Option(..., "--name", help="this silo's id (as in the roster)"),
    out: Path = typer.Option(Path("keys"), "--out", help="directory for the key files"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing key files"),
    roster: Optional[Path] = typer.Option(None, "--roster", help="also append the entry to this roster file"),
    debug: bool = DebugOpt,
) -> None:
    """Write this silo's CURVE key pair and Ed25519 identity (0600) and print its roster entry."""
    from fedalign.silo.keys import add_to_roster, keygen_silo

    def body():
        if roster is not None:
            add_to_roster(roster, name, None)  # refuse a duplicate before any key is written
        k = keygen_silo(out, name, overwrite=overwrite)
        typer.echo(f"wrote {k.public_key}, {k.secret_key}, {k.identity} (mode 0600)")
        if roster is not None:
            add_to_roster(roster, name, k.roster_entry)
            typer.echo(f"appended {name}'s entry (public keys only) to {roster}; the coordinator and every silo "
                       "need the same roster file")
        else:
            typer.echo("add this entry to the federation's roster.toml (public keys only):\n" + k.roster_entry)

    run_command(body, debug)


def status(
    config: Optional[Path] = ConfigOpt,
    sets: Optional[list[str]] = SetOpt,
    debug: bool = DebugOpt,
) -> None:
    """Show this silo's federated progress: committed rounds, privacy spent, data used."""

    def body():
        cfg = load_config_from_cli(config, config_overrides(sets))
        from fedalign.silo.federation import federation_status

        for k, v in federation_status(cfg).items():
            typer.echo(f"{k}: {v}")

    run_command(body, debug)


def build_app() -> typer.Typer:
    """The ``silo`` app (the three CLIs are built alike: a function that registers the commands)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)

    @app.callback()
    def _root() -> None:  # a group callback keeps the subcommands subcommands
        """A silo of federated multimodal alignment: train the projector on local data."""

    for command in (train, describe, reference, keygen, status):
        app.command()(command)
    app.command("public-basis")(public_basis)
    from fedalign.silo.audit import app as audit_app

    app.add_typer(audit_app, name="audit")
    return app


def __getattr__(name: str) -> Any:  # ``silo.cli.app`` is built on first use, as aggregator.cli.app
    if name == "app":
        return build_app()
    raise AttributeError(name)


def main() -> None:
    """Console-script entry point (``silo = fedalign.silo.cli:main``)."""
    offline_by_default()
    try:
        build_app()()
    except SystemExit as e:
        from fedalign.silo.distributed import exit_process

        code = e.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        exit_process(code or 0)  # a torchrun rank: skip the C++ teardown (see its docstring)
        raise


if __name__ == "__main__":
    main()
