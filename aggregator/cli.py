"""``aggregator``: serve a federation (``serve``), make its CURVE keys (``keygen``), report a run
(``status``). In-process experiments are ``fedalign-lab simulate`` (:mod:`fedalign.lab.cli`).

Every command prints one clear line and exits non-zero on bad input (``fedalign.host.cli_errors``);
``--debug`` shows tracebacks.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from fedalign.host.cli_errors import run_cli
from fedalign.host.process import apply_process_defaults

__all__ = ["app", "main", "build_app", "initial_params", "serve_from_config"]

log = logging.getLogger(__name__)


def initial_params(cfg) -> dict:
    """θ_0 from ``init.params`` (safetensors) or a fresh projector initialised like ``nn.Linear``.

    Keys follow the projector's ``nn.Sequential`` (``0.*``, and ``2.*`` for mlp2x_gelu), which
    is what every silo's ``projector_state()`` holds.
    """
    import torch

    from fedalign.protocol.errors import ConfigError

    init = cfg.init
    if init.params is not None:
        from safetensors.torch import load_file

        path = cfg.resolve(init.params)
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - any failure is a bad config value
            raise ConfigError(f"init.params: cannot read {path}: {e}") from e
    g = torch.Generator().manual_seed(init.seed)
    shapes = [(init.d_model, init.d_vision)] + ([(init.d_model, init.d_model)] if init.projector == "mlp2x_gelu" else [])
    out = {}
    for i, (o, n_in) in zip((0, 2), shapes):
        bound = n_in**-0.5
        out[f"{i}.weight"] = torch.empty(o, n_in).uniform_(-bound, bound, generator=g)
        out[f"{i}.bias"] = torch.empty(o).uniform_(-bound, bound, generator=g)
    return out


def _insecure_allowed(cfg, flag: bool, what: str) -> bool:
    from fedalign.protocol.errors import InsecureModeRefused

    if not (cfg.server.allow_insecure_plaintext and flag):
        missing = [m for m, ok in (("server.allow_insecure_plaintext = true in the config (site policy)",
                                    cfg.server.allow_insecure_plaintext),
                                   ("--insecure-plaintext on the command line", flag)) if not ok]
        raise InsecureModeRefused(f"{what} is insecure and needs " + " and ".join(missing))
    return True


def serve_from_config(config: Path, *, insecure_plaintext: bool = False, quiet: bool = False,
                      overrides: dict[str, Any] | None = None):
    """Load ``aggregator.toml`` and run (or resume) the federation to its last round."""
    from fedalign.aggregator.checkpoint import CheckpointStore, RunState
    from fedalign.aggregator.rounds import Coordinator, RoundPolicy
    from fedalign.aggregator.server import ZmqServer
    from fedalign.protocol.config.aggregator import load_aggregator_config
    from fedalign.protocol.config.roster import load_roster
    from fedalign.protocol.errors import CheckpointError, ConfigError
    from fedalign.protocol.eventlog import EventLog
    from fedalign.protocol.keys import load_keypair
    from fedalign.protocol.ledger import Ledger
    from fedalign.protocol.messages import SumScheme, wire_registry
    from fedalign.fedcmp.strategies import make_strategy, strategy_options

    apply_process_defaults()
    cfg = load_aggregator_config(config, overrides)
    roster = load_roster(cfg.resolve(cfg.server.roster))
    if len(roster.silos) < cfg.run.min_silos:
        raise ConfigError(f"{cfg.resolve(cfg.server.roster)}: {len(roster.silos)} silo(s) listed, "
                          f"run.min_silos is {cfg.run.min_silos}")
    scheme = SumScheme(cfg.secure_sum.scheme)
    insecure = False
    if scheme == SumScheme.PLAIN_INSECURE:
        insecure = _insecure_allowed(cfg, insecure_plaintext, "secure_sum.scheme = 'plain'")
    keypair = None
    if cfg.server.secret_key is None:
        insecure = _insecure_allowed(cfg, insecure_plaintext, "server.secret_key unset (plaintext transport)")
    else:
        keypair = load_keypair(cfg.resolve(cfg.server.secret_key))
    strategy = make_strategy(cfg.strategy.name, dp=cfg.strategy.dp, **cfg.strategy.options)
    if getattr(getattr(strategy, "config", None), "reliability", None) == "reference":
        raise ConfigError(f"{config}: strategy.options.reliability = 'reference' needs the coordinator's own public "
                          "set and a model to train on it, which aggregator serve does not support yet (fedalign-lab "
                          "simulate does); use 'off', 'blend' or 'consensus'")
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(out / "checkpoints")
    state = store.load()
    meta = {"strategy": cfg.strategy.name, "strategy_options": strategy_options(strategy), "scheme": str(scheme)}
    if state is None:
        params = initial_params(cfg)
        state = RunState(0, params, strategy.init_public(params), strategy.init_server_state(params), meta=meta)
    elif {k: state.meta.get(k) for k in meta} != json.loads(json.dumps(meta)):
        raise CheckpointError(f"{store.state_path}: checkpoint was made with {state.meta}, config says {meta}; "
                              "use a new output.dir or the original settings")
    events = EventLog(out / "aggregator.jsonl", source="aggregator")
    ledger = Ledger(out / "ledger.jsonl")
    policy = RoundPolicy(
        rounds=cfg.run.rounds, min_silos=cfg.run.min_silos, train_deadline_s=cfg.run.train_deadline_s,
        step_deadline_s=cfg.run.step_deadline_s, heartbeat_timeout_s=cfg.run.heartbeat_timeout_s,
        roster_wait_s=cfg.run.roster_wait_s, max_failed_rounds=cfg.run.max_failed_rounds, seed=cfg.run.seed,
        scheme=scheme, clip=cfg.secure_sum.clip, neighbours=cfg.secure_sum.neighbours,
        ckks_poly_modulus=cfg.secure_sum.ckks_poly_modulus, allow_insecure_plaintext=insecure,
    )
    server = ZmqServer(cfg.server.bind, keypair=keypair, allowlist=roster.curve_keys(), registry=wire_registry(),
                       max_bytes=cfg.server.max_message_mb << 20, allow_insecure_plaintext=insecure)
    events.emit("listening", endpoint=server.endpoint, resumed_round=state.round)
    progress = _Progress(cfg.run.rounds, state.round, quiet=quiet)
    try:
        coord = Coordinator(server, strategy, strategy_name=cfg.strategy.name, strategy_options=strategy_options(strategy),
                            identities=roster.identities(), policy=policy, state=state, store=store, events=events,
                            ledger=ledger, on_round=progress.update)
        with progress:
            final = coord.run()
            time.sleep(0.5)  # let RunEnd leave the socket before it closes
    finally:
        server.close()
        events.close()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in final.params.items()}, str(out / "final_projector.safetensors"))
    (out / "history.json").write_text(json.dumps(final.history, indent=1))
    return final


class _Progress:
    """A rich progress bar over rounds plus one line per committed round (wire bytes per silo)."""

    def __init__(self, total: int, done: int, *, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True, quiet=quiet)
        self.bar = Progress(TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=self.console, transient=False)
        self.task = self.bar.add_task("rounds", total=total, completed=done)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def update(self, state, record) -> None:
        self.bar.update(self.task, completed=state.round)
        up = ", ".join(f"{s} {record['wire_up_bytes'].get(s, 0):,}B" for s in record["survivors"])
        self.console.print(f"round {record['round']}: {len(record['survivors'])} silos summed, "
                           f"{record['sum_seconds']:.2f}s in sums; wire up per silo: {up}")


def _debug_option() -> Any:
    return typer.Option(False, "--debug", help="show tracebacks")


def serve(
    config: Path = typer.Option(..., "--config", "-c", help="aggregator.toml"),
    insecure_plaintext: bool = typer.Option(
        False, "--insecure-plaintext",
        help="INSECURE: allow plaintext transport / plain sums (the config's site policy must allow it too)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a config field: section.field=value"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
    debug: bool = _debug_option(),
) -> None:
    """Run the federation in aggregator.toml (resuming from its last checkpoint)."""
    from fedalign.protocol.config import parse_override

    def go():
        overrides = dict(parse_override(s) for s in (set_ or []))
        final = serve_from_config(config, insecure_plaintext=insecure_plaintext, quiet=quiet, overrides=overrides)
        typer.echo(f"done: {final.round} rounds committed")

    run_cli(go, debug=debug)


def keygen(
    out: Path = typer.Option(Path("keys"), "--out", help="directory for the key files"),
    name: str = typer.Option("aggregator", "--name", help="file name stem"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing key files"),
    debug: bool = _debug_option(),
) -> None:
    """Write the aggregator's CURVE key pair (<name>.key public, <name>.key_secret; both 0600)."""
    from fedalign.protocol.keys import load_public, write_keypair

    def go():
        pub, sec = write_keypair(out, name, role="aggregator", overwrite=overwrite)
        typer.echo(f"wrote {pub} and {sec} (mode 0600)")
        typer.echo(f"public key (give to every silo as federation.aggregator_public_key): {load_public(pub)}")

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
    app.command("serve")(serve)
    app.command("keygen")(keygen)
    app.command("status")(status)
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
