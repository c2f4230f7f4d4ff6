"""The ``silo`` command line: ``silo train [--local] --config silo.toml``.

``--local`` trains without an aggregator and writes ``metrics.json`` and the exported
projector to ``output.dir`` (each file atomically, only after training and evaluation
succeeded). Without ``--local`` the networked runtime (``fedalign.silo.federation.run_federated``) runs.
Errors print one line and exit non-zero (table in ``fedalign.host.cli_errors``); ``--debug`` adds the
traceback. Other modules add commands with ``@app.command()``.
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


def _refuse_foreign_state(cfg, local: bool) -> None:
    """--local never resumes a federated run's state (cursor, DP budget) and the reverse."""
    from fedalign.protocol.errors import ConfigError

    state = cfg.state_dir
    federated = (state / "federation").is_dir()
    used = (state / "cursor.json").exists() or (state / "privacy.json").exists()
    if local and federated:
        raise ConfigError(f"output.dir {cfg.out_dir} holds a federated run's state ({state / 'federation'}); "
                          "`silo train --local` would resume its data cursor and privacy budget; give another "
                          "--out (or output.state_dir)")
    if not local and used and not federated:
        raise ConfigError(f"output.dir {cfg.out_dir} holds a local run's state ({state}); a federated run "
                          "would resume its data cursor and privacy budget; give another output.dir")


def _data_lines(report: dict) -> None:
    """Say what was read, and what was skipped (data.bad_records = 'skip')."""
    if report.get("source") == "files":
        say(f"data: kept {report.get('kept')} record(s), skipped {report.get('skipped', 0)}"
            + (f" (data.bad_records = 'skip'; first: {report['problems'][0]})" if report.get("problems") else ""))
    for w in report.get("warnings", []):
        say(f"warning: {w}")


def _train_local(cfg) -> dict[str, Any]:
    from fedalign.protocol.errors import StoppedEarly
    from fedalign.silo.audit import SiloAuditTrail, check_config
    from fedalign.silo.session import SiloSession, run_local

    policy = check_config(cfg, networked=False)  # before any data is loaded: names every broken clause
    _refuse_foreign_state(cfg, local=True)
    session = SiloSession(cfg, notify=say, policy=policy)  # its DP plan against the policy's per-pass clause
    trail = SiloAuditTrail(session.ledger)
    trail.run_start(cfg, policy, networked=False)
    session.record_dp_plan()
    _data_lines(session.inputs.report)
    if session.samples_seen:
        say(f"resuming from {cfg.state_dir}: {session.samples_seen} record(s) already used"
            + (f", epsilon {session.epsilon_spent:.4g} already spent" if session.epsilon_spent else ""))
    avail = session.rounds_available()
    if avail < cfg.train.rounds:
        say(f"note: the data left gives {avail} shard(s) of data.shard_size = {cfg.data.shard_size} "
            f"({session.cursor.n} records, data.max_passes = {cfg.data.max_passes}); train.rounds is "
            f"{cfg.train.rounds}, so the run will stop after {avail}")

    def show(r: int, res) -> None:
        eps = f"  eps {res.epsilon:.3f}" if res.epsilon is not None else ""
        typer.echo(f"round {r + 1}/{cfg.train.rounds}: {res.n_samples} samples, "
                   f"loss {res.metrics['train_loss']:.4f}, {res.metrics['examples_per_second']:.0f} ex/s{eps}")

    params, summary = run_local(session, on_round=show)
    export = policy is None or policy.release.export
    files = _write_outputs(cfg, params, summary, export=export)
    trail.run_end(reason=summary["stopped_by"], rounds_done=summary["rounds_completed"], export_written=export,
                  evaluation_written=True)
    if "llava" in files:  # the card names the ledger's final head: written after run_end
        from fedalign.silo.export import write_silo_card

        files["card"] = write_silo_card(cfg, params, files, rounds_done=summary["rounds_completed"],
                                        rounds_planned=summary.get("rounds_planned"), included=None,
                                        scheme=None, records=session.cursor.n,
                                        epsilon=summary.get("epsilon_spent"))
    keys = ("heldout_nll", "heldout_nll_text_only", "mc_accuracy", "presence_f1", "samples_seen", "epsilon_spent")
    typer.echo("  ".join(f"{k}={summary[k]:.4g}" if isinstance(summary.get(k), float) else f"{k}={summary.get(k)}"
                         for k in keys if k in summary))
    typer.echo(f"wrote {files['metrics']}" + (f" and {files['llava']}" if "llava" in files
                                               else " (no export: the site policy's release.export is false)"))
    exported = f"exported to {files['llava']}" if "llava" in files else "not exported (site policy)"
    done, planned = summary["rounds_completed"], summary["rounds_planned"]
    if summary["stopped_by"] == "data_spent":
        raise StoppedEarly(
            f"stopped after {done} of {planned} rounds: the data is spent ({session.cursor.n} records in shards of "
            f"data.shard_size = {cfg.data.shard_size}, data.max_passes = {cfg.data.max_passes}); the {done} "
            f"finished rounds were evaluated and {exported}; for more rounds give more data, a "
            "smaller data.shard_size or more data.max_passes (DP composes over passes)")
    if summary["stopped_by"] == "privacy_budget":
        raise StoppedEarly(
            f"stopped after {done} of {planned} rounds: the next round would pass the privacy budget "
            f"(epsilon spent {summary['epsilon_spent']:.4g} of privacy.epsilon {cfg.privacy.epsilon:g}); no data or "
            f"epsilon went to it; the {done} finished rounds were evaluated and {exported}; "
            "for more rounds raise privacy.epsilon or privacy.noise_multiplier, or train fewer steps per round")
    return summary


def _train_federated(cfg, debug: bool, insecure_plaintext: bool = False):
    from fedalign.protocol.errors import RoundAborted, StoppedEarly
    from fedalign.silo.federation import federated_train  # the networked runtime; imported only when used

    _refuse_foreign_state(cfg, local=False)
    summary = federated_train(cfg, insecure_plaintext=insecure_plaintext, notify=say)
    ev = summary.get("eval", {})
    typer.echo(f"federated run over: {summary['reason']}; rounds included {summary['rounds_included']}; "
               + "  ".join(f"{k}={ev[k]:.4g}" for k in ("heldout_nll", "mc_accuracy", "presence_f1") if k in ev)
               + (f"  epsilon_spent={summary['epsilon_spent']:.4g}" if summary.get("epsilon_spent") is not None else ""))
    kept = (f"the projector after {summary['rounds_done']} round(s) was evaluated and exported to "
            f"{summary['export']['llava']}" if "export" in summary else "no round finished, nothing was exported")
    if "export" in summary:
        typer.echo(f"wrote {summary['export'].get('llava')}")
    if summary.get("ledger_closed"):
        typer.echo(summary["ledger_closed"])
    reason = str(summary["reason"])
    if reason.startswith("aborted"):
        raise RoundAborted(f"the aggregator at {cfg.federation.aggregator} ended the run: {reason}; {kept}")
    if reason == "data spent":
        raise StoppedEarly(f"this silo left the run: its data is spent (data.shard_size = {cfg.data.shard_size}, "
                           f"data.max_passes = {cfg.data.max_passes}); {kept}")
    if reason.startswith("privacy budget exhausted"):
        raise StoppedEarly(f"this silo left the run: {reason}; {kept}")
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
        return _on_ranks(cfg, lambda: _train_local(cfg) if local else _train_federated(cfg, debug, insecure_plaintext))

    run_command(body, debug)


def _on_ranks(cfg, main: Callable[[], Any]) -> Any:
    """Run ``main`` in one process, or under torchrun: rank 0 runs it (the silo: aggregator, state,
    ledger, outputs, printing) and every other rank serves rank 0's rounds (``SiloSession.serve``)."""
    from fedalign.protocol.errors import DistributedError
    from fedalign.silo import distributed

    group = distributed.init_from_env(cfg.model.device)
    if group is None:
        return main()
    clean = False
    try:
        if not group.is_main:
            from fedalign.silo.session import SiloSession

            served = SiloSession(cfg).serve()
            clean = True
            return served
        try:
            out = main()
        except BaseException:
            try:
                clean = group.stop()  # the other ranks wait for a command: release them (not mid-round)
            except DistributedError:
                pass  # a rank is gone already; torchrun stops the rest
            raise
        clean = group.stop()
        return out
    finally:
        group.close(clean=clean)


@app.command()
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


@app.command()
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


@app.command()
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
    offline_by_default()
    try:
        app()
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
