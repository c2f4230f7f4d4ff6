"""Building and running a silo's training from a validated silo.toml: a local run (``train_local``),
one silo of a federation (``train_federated``), and either under torchrun (``run_on_ranks``). The CLI
(``silo/cli.py``) parses the command line and prints through the ``say``/``echo`` it passes in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

__all__ = ["train_local", "train_federated", "run_on_ranks", "write_outputs", "refuse_foreign_state"]

Say = Callable[[str], None]


def write_outputs(cfg, params, summary, *, export: bool = True) -> dict[str, Path]:
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


def refuse_foreign_state(cfg, local: bool) -> None:
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


def _data_lines(report: dict, say: Say) -> None:
    """Say what was read, and what was skipped (data.bad_records = 'skip')."""
    if report.get("source") == "files":
        say(f"data: kept {report.get('kept')} record(s), skipped {report.get('skipped', 0)}"
            + (f" (data.bad_records = 'skip'; first: {report['problems'][0]})" if report.get("problems") else ""))
    for w in report.get("warnings", []):
        say(f"warning: {w}")


def train_local(cfg, *, say: Say, echo: Say) -> dict[str, Any]:
    """A local run (``silo train --local``): site policy, session, rounds, evaluation, outputs, card;
    progress to ``say``, results to ``echo``; StoppedEarly when data or budget ran out first."""
    from fedalign.protocol.errors import StoppedEarly
    from fedalign.silo.audit import SiloAuditTrail, check_config
    from fedalign.silo.privacy import clip_hint
    from fedalign.silo.session import SiloSession, run_local

    policy = check_config(cfg, networked=False)  # before any data is loaded: names every broken clause
    refuse_foreign_state(cfg, local=True)
    session = SiloSession(cfg, notify=say, policy=policy)  # its DP plan against the policy's per-pass clause
    trail = SiloAuditTrail(session.ledger)
    trail.run_start(cfg, policy, networked=False)
    session.record_dp_plan()
    _data_lines(session.inputs.report, say)
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
        echo(f"round {r + 1}/{cfg.train.rounds}: {res.n_samples} samples, "
                   f"loss {res.metrics['train_loss']:.4f}, {res.metrics['examples_per_second']:.0f} ex/s{eps}")
        hint = clip_hint(res.metrics, cfg.privacy.max_grad_norm) if cfg.privacy.enabled else None
        if hint:
            say(f"round {r + 1}: note: {hint}")

    params, summary = run_local(session, on_round=show)
    export = policy is None or policy.release.export
    files = write_outputs(cfg, params, summary, export=export)
    trail.run_end(reason=summary["stopped_by"], rounds_done=summary["rounds_completed"], export_written=export,
                  evaluation_written=True)
    if "llava" in files:  # the card names the ledger's final head: written after run_end
        from fedalign.silo.export import write_silo_card

        files["card"] = write_silo_card(cfg, params, files, rounds_done=summary["rounds_completed"],
                                        rounds_planned=summary.get("rounds_planned"), included=None,
                                        scheme=None, records=session.cursor.n,
                                        epsilon=summary.get("epsilon_spent"))
    keys = ("heldout_nll", "heldout_nll_text_only", "mc_accuracy", "presence_f1", "samples_seen", "epsilon_spent")
    echo("  ".join(f"{k}={summary[k]:.4g}" if isinstance(summary.get(k), float) else f"{k}={summary.get(k)}"
                         for k in keys if k in summary))
    echo(f"wrote {files['metrics']}" + (f" and {files['llava']}" if "llava" in files
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


def train_federated(cfg, *, say: Say, echo: Say, insecure_plaintext: bool = False):
    """One silo of a federated run: the networked runtime, then what it kept, on ``echo``."""
    from fedalign.protocol.errors import RoundAborted, StoppedEarly
    from fedalign.silo.federation import federated_train  # the networked runtime; imported only when used

    refuse_foreign_state(cfg, local=False)
    summary = federated_train(cfg, insecure_plaintext=insecure_plaintext, notify=say)
    ev = summary.get("eval", {})
    echo(f"federated run over: {summary['reason']}; rounds included {summary['rounds_included']}; "
               + "  ".join(f"{k}={ev[k]:.4g}" for k in ("heldout_nll", "mc_accuracy", "presence_f1") if k in ev)
               + (f"  epsilon_spent={summary['epsilon_spent']:.4g}" if summary.get("epsilon_spent") is not None else ""))
    kept = (f"the projector after {summary['rounds_done']} round(s) was evaluated and exported to "
            f"{summary['export']['llava']}" if "export" in summary else "no round finished, nothing was exported")
    if "export" in summary:
        echo(f"wrote {summary['export'].get('llava')}")
    if summary.get("ledger_closed"):
        echo(summary["ledger_closed"])
    reason = str(summary["reason"])
    if reason.startswith("aborted"):
        raise RoundAborted(f"the aggregator at {cfg.federation.aggregator} ended the run: {reason}; {kept}")
    if reason == "data spent":
        raise StoppedEarly(f"this silo left the run: its data is spent (data.shard_size = {cfg.data.shard_size}, "
                           f"data.max_passes = {cfg.data.max_passes}); {kept}")
    if reason.startswith("privacy budget exhausted"):
        raise StoppedEarly(f"this silo left the run: {reason}; {kept}")
    return summary


def run_on_ranks(cfg, main: Callable[[], Any]) -> Any:
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
