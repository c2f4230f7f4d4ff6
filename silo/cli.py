"""The ``silo`` command line: ``silo train [--local] --config silo.toml``.

``--local`` trains without an aggregator and writes ``metrics.json`` and the exported
projector to ``output.dir`` (each file atomically, only after training and evaluation
succeeded). Without ``--local`` the networked runtime (``fedalign.silo.federation.run_federated``) runs.
Errors print one line and exit non-zero (table in ``common.cli_errors``); ``--debug`` adds the
traceback. Other modules add commands with ``@app.command()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from fedalign.host.cli_errors import run_cli
from fedalign.protocol.config import parse_override

__all__ = ["app", "main", "config_overrides", "run_command", "load_config_from_cli"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="A silo of federated multimodal alignment: train the projector on local data.")



@app.callback()
def _root() -> None:
    """A silo of federated multimodal alignment: train the projector on local data."""


ConfigOpt = typer.Option(None, "--config", "-c", help="silo.toml (defaults apply when omitted)")
DebugOpt = typer.Option(False, "--debug", help="show tracebacks")
SetOpt = typer.Option(None, "--set", help="override any field: section.field=value (repeatable)")


def run_command(fn: Callable[[], Any], debug: bool) -> Any:
    """Run a command body with the process defaults (fedalign.host.process) and the error table."""
    from fedalign.host.process import apply_process_defaults

    apply_process_defaults()
    return run_cli(fn, debug=debug)


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


def _write_outputs(cfg, params, summary, *, export: bool = True) -> dict[str, Path]:
    from fedalign.host.atomic import atomic_write_json
    from fedalign.silo.export import export_projector

    out = cfg.out_dir
    files = export_projector(params, out, metadata={"mm_hidden_size": str(params["0.weight"].shape[1])}) \
        if export else {}
    files["metrics"] = out / "metrics.json"
    files["config"] = out / "config.json"
    atomic_write_json(files["config"], json.loads(cfg.model_dump_json()))
    atomic_write_json(files["metrics"], summary)  # last: its presence means the run completed
    return files


def _train_local(cfg) -> dict[str, Any]:
    from fedalign.silo.audit import SiloAuditTrail, check_config
    from fedalign.silo.session import SiloSession, run_local

    policy = check_config(cfg, networked=False)  # before any data is loaded: names every broken clause
    session = SiloSession(cfg)
    trail = SiloAuditTrail(session.ledger)
    trail.run_start(cfg, policy, networked=False)

    def show(r: int, res) -> None:
        eps = f"  eps {res.epsilon:.3f}" if res.epsilon is not None else ""
        typer.echo(f"round {r + 1}/{cfg.train.rounds}: {res.n_samples} samples, "
                   f"loss {res.metrics['train_loss']:.4f}, {res.metrics['examples_per_second']:.0f} ex/s{eps}")

    params, summary = run_local(session, on_round=show)
    export = policy is None or policy.release.export
    files = _write_outputs(cfg, params, summary, export=export)
    trail.run_end(reason=summary["stopped_by"], rounds_done=summary["rounds_completed"], export_written=export,
                  evaluation_written=True)
    keys = ("heldout_nll", "heldout_nll_text_only", "mc_accuracy", "presence_f1", "samples_seen", "epsilon_spent")
    typer.echo("  ".join(f"{k}={summary[k]:.4g}" if isinstance(summary.get(k), float) else f"{k}={summary.get(k)}"
                         for k in keys if k in summary))
    typer.echo(f"wrote {files['metrics']}" + (f" and {files['llava']}" if "llava" in files
                                               else " (no export: the site policy's release.export is false)"))
    return summary


def _train_federated(cfg, debug: bool, insecure_plaintext: bool = False):
    from fedalign.silo.federation import federated_train  # the networked runtime; imported only when used

    summary = federated_train(cfg, insecure_plaintext=insecure_plaintext)
    ev = summary.get("eval", {})
    typer.echo(f"federated run over: {summary['reason']}; rounds included {summary['rounds_included']}; "
               + "  ".join(f"{k}={ev[k]:.4g}" for k in ("heldout_nll", "mc_accuracy", "presence_f1") if k in ev)
               + (f"  epsilon_spent={summary['epsilon_spent']:.4g}" if summary.get("epsilon_spent") is not None else ""))
    if "export" in summary:
        typer.echo(f"wrote {summary['export'].get('llava')}")
    return summary


@app.command()
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
        return _train_local(cfg) if local else _train_federated(cfg, debug, insecure_plaintext)

    run_command(body, debug)


@app.command()
def keygen(
    name: str = typer.Option(..., "--name", help="this silo's id (as in the roster)"),
    out: Path = typer.Option(Path("keys"), "--out", help="directory for the key files"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing key files"),
    debug: bool = DebugOpt,
) -> None:
    """Write this silo's CURVE key pair and Ed25519 identity (0600) and print its roster entry."""
    from fedalign.silo.keys import keygen_silo

    def body():
        k = keygen_silo(out, name, overwrite=overwrite)
        typer.echo(f"wrote {k.public_key}, {k.secret_key}, {k.identity} (mode 0600)")
        typer.echo("add this entry to the federation's roster.toml (public keys only):\n" + k.roster_entry)

    run_command(body, debug)


@app.command()
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


def _mount_audit() -> None:
    from fedalign.silo.audit import app as audit_app

    app.add_typer(audit_app, name="audit")


_mount_audit()


def main() -> None:
    """Console-script entry point (``silo = fedalign.silo.cli:main``)."""
    from fedalign.host.process import apply_process_defaults

    apply_process_defaults(torch_too=False)  # offline hubs and one thread, before anything loads
    app()


if __name__ == "__main__":
    main()
