"""``fedalign-lab simulate``: K silos × R rounds of any strategy on any scenario, in one process.

The lab's own entry point (the aggregator never imports the lab: the lab drives the aggregator's
code, so mounting it there would be an import loop between folders). Writes to --out: metrics.jsonl
(one record per round and seed), final.json (per seed and the mean/std over seeds) and curves.png.

An experiment can live in a TOML file (``--config exp.toml``): its keys are the long options'
names (``rounds = 10``, ``dp = true``, ``sum = "secagg"``, ``scenario-option = ["purity=0.8"]``),
and an option given on the command line overrides the file (examples/experiments/).
"""

from __future__ import annotations

import json
import math
import statistics
import tomllib
from pathlib import Path
from typing import Any, Optional


import typer

from fedalign.host.cli_errors import run_cli
from fedalign.protocol.errors import ConfigError
from fedalign.lab.choices import build_strategy, make_sum

__all__ = ["simulate", "run_simulation", "experiment_options", "summarise_seeds", "METRICS", "build_app", "main",
           "parse_experiment_options", "experiment_app"]

METRICS = ("nll", "mc_accuracy", "presence_f1", "upload_bytes_per_silo_per_round", "nll_no_image",
           "mc_accuracy_no_image", "nll_cut_vs_no_image")


def summarise_seeds(finals: list[dict]) -> dict:
    """Mean and sample std over seeds of every numeric metric (std 0 for one seed)."""
    out: dict = {}
    for m in METRICS:
        vals = [f[m] for f in finals if isinstance(f.get(m), (int, float)) and math.isfinite(f[m])]
        if vals:
            out[m] = statistics.fmean(vals)
            out.setdefault("std", {})[m] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds: no seed given")
    return seeds


def parse_scenario_options(items: list[str]) -> dict:
    """``["purity=0.8", "unreliable_largest=false"]`` -> ``{"purity": 0.8, "unreliable_largest": False}``
    (none/null, true/false, then int, then float, else the word); an unknown key is one clear error, and
    ``make_scenario`` checks each value's range."""
    from fedalign.lab.world import SCENARIO_KEYS

    keys = [k for k in SCENARIO_KEYS if k != "counts"]  # a tuple: not a KEY=VALUE option
    return {key: _value(raw) for key, raw in _key_values(items, keys, "--scenario-option")}


def _key_values(items: list[str], keys, flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE with KEY one of {list(keys)}")
        out.append((key, raw))
    return out


def _value(raw: str):
    """none/null -> None, true/false -> bool, then int, then float, else the word."""
    low = raw.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low) if low.lstrip("-").isdigit() else float(low)
    except ValueError:
        return raw.strip()


def parse_experiment_options(items: list[str], defaults: dict) -> dict:
    """``--set KEY=VALUE`` items for an experiment family: KEY one of its options, VALUE of the default's
    type (a text option keeps the text as written)."""
    out = {}
    for key, raw in _key_values(items, list(defaults), "--set"):
        want = type(defaults[key])
        value = raw.strip() if want is str else _value(raw)
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            kind = {bool: "true or false", int: "an integer", float: "a number"}.get(want, want.__name__)
            raise ConfigError(f"--set {key}={raw}: expected {kind}")
        out[key] = value
    return out


def experiment_options(ctx: typer.Context, config: Path | None) -> dict[str, Any]:
    """The command's parameters: the experiment file's values where the command line gave none.

    Keys are option names without dashes' prefix, ``-`` or ``_`` alike (``scenario-option``), or the
    parameter's own name; an unknown key or a value of the wrong type is one ConfigError naming the
    file and the key."""
    params = dict(ctx.params)
    if config is None:
        return params
    try:
        table = tomllib.loads(Path(config).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {config}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{config}: not valid TOML ({e})") from None
    table = table.get("simulate", table)  # a [simulate] table or top-level keys
    by_name: dict[str, Any] = {}
    for p in ctx.command.params:
        if p.name in ("config", "debug"):
            continue
        by_name[p.name] = p
        for opt in p.opts:
            if opt.startswith("--"):
                by_name[opt[2:].replace("-", "_")] = p
    for key, value in table.items():
        p = by_name.get(str(key).replace("-", "_"))
        if p is None:
            known = sorted({q.opts[0][2:] for q in by_name.values()})
            raise ConfigError(f"{config}: unknown key {key!r}; expected one of {', '.join(known)}")
        if getattr(ctx.get_parameter_source(p.name), "name", "DEFAULT") != "DEFAULT":
            continue  # the command line (or the environment) wins
        if p.name == "seeds" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        try:
            if p.multiple:
                value = value if isinstance(value, list) else [value]
            elif isinstance(value, (list, dict)):
                raise typer.BadParameter("expected one value, not a list or table")
            params[p.name] = p.process_value(ctx, value)  # the option's own type check
        except typer.BadParameter as e:
            raise ConfigError(f"{config}: {key} = {value!r}: {e.message}") from None
    return params


def simulate(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", help="experiment TOML: keys named as the long "
                                          "options (rounds = 10, dp = true); the command line overrides it"),
    scenario: str = typer.Option("label", help="label | domain | style | unreliable | toy"),
    silos: int = typer.Option(5, help="number of silos K"),
    rounds: int = typer.Option(10, help="rounds R (one pass: each round a fresh shard)"),
    strategy: str = typer.Option("fedcmp", help="fedcmp | fedavg | fedavg-lr0.5 | fedprox | fedavgm-b0.5 | fedavgm-b0.9 | fedadam | fedyogi"),
    error_feedback: Optional[bool] = typer.Option(None, "--error-feedback/--no-error-feedback", help="Fed-CMP error feedback (default on, under DP too)"),
    flush: Optional[bool] = typer.Option(None, "--flush/--no-flush", help="Fed-CMP: the final round also sums each "
                                         "silo's error-feedback residual (default on)"),
    reliability: Optional[str] = typer.Option(None, help="Fed-CMP reliability fusion: off | blend | consensus | "
                                              "reference (the coordinator's update on its public set; the default)"),
    rho_floor: Optional[float] = typer.Option(None, help="Fed-CMP reliability: ρ below this counts as 0 (default 0)"),
    rho_power: Optional[float] = typer.Option(None, help="Fed-CMP reliability: ρ ← ρ^power (default 1)"),
    rho_smoothing: Optional[float] = typer.Option(None, help="Fed-CMP reliability reference: each silo's ρ smoothed "
                                                  "with its own last ρ, ρ ← s ρ_prev + (1 − s) ρ (default 0.7, as "
                                                  "measured in results/reliability.md)"),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize",
                                             help="Fed-CMP reliability: FLTrust magnitude normalisation (default off)"),
    reliable_basis: Optional[bool] = typer.Option(None, "--reliable-basis/--no-reliable-basis",
                                                  help="Fed-CMP reliability reference: ρ weights the basis sum too "
                                                  "(default on)"),
    public_size: Optional[int] = typer.Option(None, help="reliability reference: the coordinator's public set size "
                                              "(world scenarios; default 300)"),
    reference_kind: Optional[str] = typer.Option(None, help="reliability reference: update | contrast (default "
                                                 "update)"),
    kappa: Optional[float] = typer.Option(None, help="Fed-CMP blend weight κ (default 0.02; blend/consensus were measured at 1)"),
    beta: Optional[float] = typer.Option(None, help="Fed-CMP OPM β (default 0.5; 0 under DP)"),
    rank: Optional[int] = typer.Option(None, help="Fed-CMP rank r (default 16)"),
    server_lr: Optional[float] = typer.Option(None, help="Fed-CMP server learning rate (default 1)"),
    alpha: Optional[float] = typer.Option(None, help="label skew: Dirichlet α"),
    corruption: Optional[float] = typer.Option(None, help="unreliable: share of mismatched captions at bad silos"),
    n_unreliable: Optional[int] = typer.Option(None, help="unreliable: number of bad silos"),
    samples_per_round: Optional[int] = typer.Option(None, help="samples per silo per round (default 64; 1024 under --dp)"),
    drop_unreliable: bool = typer.Option(False, "--oracle-drop-unreliable", help="oracle: leave the known-bad silos out"),
    scenario_option: list[str] = typer.Option([], "--scenario-option", help="KEY=VALUE passed to the world's "
                                              "make_scenario, repeatable: purity, quantity_alpha, min_samples, "
                                              "skew_attribute, unreliable_largest, domain_purity"),
    world: str = typer.Option("default", help="embedded world size: default | tiny (seconds to build; for tests)"),
    test_size: Optional[int] = typer.Option(None, help="held-out samples (default 300)"),
    batch_size: Optional[int] = typer.Option(None, help="local batch (DP: expected Poisson batch; default 16; 256 under --dp)"),
    lr: Optional[float] = typer.Option(None, help="local learning rate (default 2e-3; 3e-3 under --dp)"),
    optimizer: Optional[str] = typer.Option(None, help="local optimizer: adamw | sgd (default adamw)"),
    local_epochs: Optional[float] = typer.Option(None, help="passes over each round's shard (default 1; 8 under --dp)"),
    physical_batch_size: Optional[int] = typer.Option(None, help="micro-batch bound for large logical batches (128 under --dp)"),
    seeds: str = typer.Option("0", help="comma-separated seeds, e.g. 0,1,2"),
    dp: bool = typer.Option(False, "--dp/--no-dp", help="record-level DP at every silo (Opacus)"),
    dp_noise: Optional[float] = typer.Option(None, help="DP noise multiplier σ: expert override (default: derived "
                                             "from --dp-epsilon/--dp-delta for the planned schedule)"),
    dp_clip: float = typer.Option(1.0, help="DP per-sample clipping norm C"),
    dp_epsilon: float = typer.Option(8.0, help="DP budget ε per silo"),
    dp_delta: float = typer.Option(1e-5, help="DP budget δ per silo"),
    sum_kind: str = typer.Option("secagg", "--sum", help="secagg | ckks | plain (plain needs --allow-insecure-plain-sums)"),
    sum_clip: float = typer.Option(8.0, help="declared bound on every summed value (fixed point)"),
    allow_insecure_plain_sums: bool = typer.Option(False, help="INSECURE: permit --sum plain"),
    eval_every: int = typer.Option(1, help="evaluate every N rounds (and after the last)"),
    engine: str = typer.Option("inprocess", help="inprocess (round loop over the Strategy + secure sums) | "
                               "network (the runtime's Coordinator and silos over an in-memory transport)"),
    out: Path = typer.Option(Path("runs/simulate"), help="output folder"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
) -> None:
    """Simulate K silos × R rounds in one process over the real strategy and secure-sum code."""
    run_cli(lambda: run_simulation(**experiment_options(ctx, config)), debug=debug)


def run_simulation(
    *, scenario, silos, rounds, strategy, error_feedback, flush, reliability, rho_floor, rho_power, rho_smoothing,
    normalize, reliable_basis, public_size, reference_kind, kappa, beta, rank, server_lr, alpha, corruption,
    n_unreliable, samples_per_round, drop_unreliable, scenario_option, world, test_size, batch_size, lr,
    optimizer, local_epochs, physical_batch_size, seeds, dp, dp_noise, dp_clip, dp_epsilon, dp_delta, sum_kind,
    sum_clip, allow_insecure_plain_sums, eval_every, engine, out, **_cli,
) -> None:
    """One ``simulate`` run from its parameters (the command's, after the experiment file)."""
    from fedalign.lab.outputs import JsonlWriter, plot_curves, plot_reliability, write_final
    from fedalign.lab.runner import simulate_problem
    from fedalign.lab.scenarios import ProblemOptions, build_problem

    seed_list = _seeds(seeds)
    scenario_extra = parse_scenario_options(scenario_option)
    sum_fn, sum_label = make_sum(sum_kind, clip=sum_clip, allow_insecure_plain_sums=allow_insecure_plain_sums)
    dp_opts = dict(noise_multiplier=dp_noise, max_grad_norm=dp_clip, epsilon=dp_epsilon, delta=dp_delta) if dp else None
    writer = JsonlWriter(out / "metrics.jsonl")
    finals, curves, unreliable = [], {}, {}
    for seed in seed_list:
        strat = build_strategy(strategy, dp=dp, rank=rank, error_feedback=error_feedback, reliability=reliability,
                               kappa=kappa, beta=beta, server_lr=server_lr, seed=seed, rho_floor=rho_floor,
                               rho_power=rho_power, normalize=normalize, reliable_basis=reliable_basis,
                               rho_smoothing=rho_smoothing, flush=flush)
        opts = ProblemOptions(n_silos=silos, rounds=rounds, seed=seed, alpha=alpha, corruption=corruption,
                              n_unreliable=n_unreliable, samples_per_round=samples_per_round, dp=dp_opts,
                              extra={"world": world, **({"test_size": test_size} if test_size else {}),
                                     **({"public_size": public_size} if public_size else {}),
                                     **({"reference_kind": reference_kind} if reference_kind else {}),
                                     **{k: v for k, v in dict(batch_size=batch_size, lr=lr, optimizer=optimizer,
                                                              local_epochs=local_epochs,
                                                              physical_batch_size=physical_batch_size).items()
                                        if v is not None},
                                     **scenario_extra})
        problem = build_problem(scenario, opts)
        keep = [k for k in range(problem.n_silos) if k not in problem.unreliable] if drop_unreliable else None
        writer.extra = {"seed": seed, "strategy": strat.name, "scenario": scenario}
        typer.echo(f"seed {seed}: {strat.name} on {scenario}, {silos} silos × {rounds} rounds, engine {engine}, "
                   f"sums: {sum_kind if engine == 'network' else sum_label}")
        if engine == "network":
            if keep is not None:
                raise ConfigError("--oracle-drop-unreliable works with --engine inprocess only")
            from fedalign.lab.network import simulate_networked

            res = simulate_networked(problem, strategy, strat, rounds, scheme=sum_kind, clip=sum_clip,
                                     allow_insecure_plaintext=allow_insecure_plain_sums)
            for rec in res.records:
                writer(rec)
            sum_label = res.final["secure_sum"]
        elif engine == "inprocess":
            res = simulate_problem(problem, strat, rounds, secure_sum=sum_fn, secure_sum_label=sum_label,
                                   silos=keep, eval_every=eval_every, on_record=writer)
        else:
            raise ConfigError(f"--engine: expected inprocess or network, got {engine!r}")
        final = {"scenario": scenario, "seed": seed, "dp": dp_opts, **res.final}
        if hasattr(problem, "no_image"):  # the same frozen LM without the image: the level to beat
            final.update(problem.no_image())
            if isinstance(final.get("nll"), float):
                final["nll_cut_vs_no_image"] = 1.0 - final["nll"] / final["nll_no_image"]
        if getattr(problem, "dp_plan", None) is not None:
            from dataclasses import asdict

            final["dp_plan"] = asdict(problem.dp_plan)
        finals.append(final)
        curves[f"seed {seed}"] = res.records
        unreliable[f"seed {seed}"] = tuple(problem.unreliable)
        typer.echo("  " + ", ".join(f"{m}={final[m]:.4g}" for m in METRICS if isinstance(final.get(m), float)))
    summary = {"strategy": finals[0]["strategy"], "scenario": scenario, "seeds": seed_list,
               "secure_sum": sum_label, "rounds": rounds, "n_silos": finals[0]["n_silos"], "dp": dp_opts,
               **summarise_seeds(finals), "runs": finals}
    write_final(out / "final.json", summary)
    plot_curves(curves, out / "curves.png", title=f"{summary['strategy']} on {scenario} ({sum_label})")
    rho_png = ""
    if plot_reliability(curves, out / "reliability.png", unreliable,
                        title=f"{summary['strategy']} on {scenario}: each silo's own ρ"):
        rho_png = f", {out / 'reliability.png'}"
    typer.echo(f"wrote {out / 'metrics.jsonl'}, {out / 'final.json'}, {out / 'curves.png'}{rho_png}")


def experiment_app() -> typer.Typer:
    """``fedalign-lab experiment``: every family behind results/ (fedalign.lab.experiments), one runner and
    one table writer."""
    exp = typer.Typer(no_args_is_help=True, help="The results tables: run an experiment family (resumable), or "
                      "write its tables from the committed run lines.")
    known = "fedcmp | reliability | dp | world-check"

    @exp.command("run")
    def run(family: str = typer.Argument(..., help=known),
            option: list[str] = typer.Option([], "--set", help="KEY=VALUE: one of the family's run options, "
                                             "repeatable (its module's docstring lists them)"),
            row: list[str] = typer.Option([], "--row", help="run only this row (its label), repeatable"),
            jobs: int = typer.Option(2, help="worker processes at once (≤ 2 on a 2-core machine; 0: in this "
                                     "process)"),
            runs: Optional[Path] = typer.Option(None, help="run lines folder (default results/<family's runs>/)"),
            out: Optional[Path] = typer.Option(None, help="tables folder (default results/)"),
            debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
        """Run every (job, seed) of FAMILY that its run lines lack, then write its tables."""
        from fedalign.lab.experiments import family as get
        from fedalign.lab.jobs import run_family

        def go() -> None:
            given = parse_experiment_options(option, dict(get(family).options))
            if run_family(family, given, jobs=jobs, rows=row, runs=runs, out=out):
                raise SystemExit(1)

        run_cli(go, debug=debug)

    @exp.command("table")
    def table(family: str = typer.Argument(..., help=known),
              runs: Optional[Path] = typer.Option(None, help="run lines folder (default results/<family's runs>/)"),
              out: Optional[Path] = typer.Option(None, help="tables folder (default results/)"),
              debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
        """Write FAMILY's tables (md, csv, png) from its run lines; nothing is trained."""
        from fedalign.lab.tables import write_table

        run_cli(lambda: write_table(family, runs, out), debug=debug)

    @exp.command("worker", hidden=True)
    def worker(family: str, job: str, seed: int, options: str = typer.Option(..., help="the run options, JSON"),
               runs: Path = typer.Option(...), row: list[str] = typer.Option([], "--row")) -> None:
        """One (job, seed) of FAMILY in this process (the runner starts these)."""
        from fedalign.lab.jobs import run_worker

        if run_worker(family, job, seed, json.loads(options), runs, row):
            raise SystemExit(1)

    return exp


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="fedalign's lab: in-process federated experiments over the product's round loop.")

    @app.callback()
    def lab() -> None:  # a group callback keeps `simulate` a subcommand, as the README writes it
        """fedalign's lab: in-process federated experiments over the product's round loop."""

    app.command("simulate")(simulate)
    app.add_typer(experiment_app(), name="experiment")
    return app


def main() -> None:
    from fedalign.host.process import apply_process_defaults

    apply_process_defaults()
    build_app()()


if __name__ == "__main__":  # python -m fedalign.lab.cli
    main()
