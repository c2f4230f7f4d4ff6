"""Building and running a served federation from a validated aggregator.toml: θ_0, the reference
process's config, the coordinator and its transport, progress on the console, the aggregator's
model card. The CLI (``aggregator/cli.py``) parses the command line and prints; this module composes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

from fedalign.compliance.eventlog import EventLog
from fedalign.host.process import apply_process_defaults
from fedalign.protocol.files import private_mkdir

__all__ = ["initial_params", "fresh_projector", "init_projector", "params_source", "serve_from_config",
           "theta0_record", "params_sha256", "write_aggregator_card"]

log = logging.getLogger(__name__)


def initial_params(cfg) -> dict:
    """θ_0 from ``init.params`` (safetensors) or a fresh projector initialised like ``nn.Linear``.

    Keys follow the projector's ``nn.Sequential`` (``0.*``, and ``2.*`` for mlp2x_gelu), which
    is what every silo's ``projector_state()`` holds; a file in LLaVA's or HF Llava's layout (a
    silo's export, e.g. `silo train --local` on the coordinator's public set) is read into it.
    """
    from fedalign.protocol.errors import ConfigError
    from fedalign.projector.keys import to_our_layout

    init = cfg.init
    if init.params is not None:
        from safetensors.torch import load_file

        path = cfg.resolve(init.params)
        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - any failure is a bad config value
            raise ConfigError(f"init.params: cannot read {path}: {e}") from e
        try:
            return to_our_layout(state)
        except ConfigError as e:
            raise ConfigError(f"init.params: {path}: {e}; a file in LLaVA's (model.mm_projector.*) or HF "
                              "Llava's (multi_modal_projector.*) layout must hold the whole projector") from None
    return fresh_projector(init.projector, init.d_vision, init.d_model, init.seed)


def theta0_record(cfg, params: dict | None) -> dict:
    """What the ledger records about θ_0: its source, the SHA-256 of ``init.params``' file (when
    set) and of θ_0's tensors (``params_sha256``: names, dtypes, shapes, bytes in name order; None
    on a resumed run, whose θ_0 is no longer in memory), so an auditor can check which public warm
    start, or which fresh initialisation, a federation began from."""
    import hashlib

    out: dict = {"source": params_source(cfg), "file_sha256": None, "params_sha256": None}
    if cfg.init.params is not None:
        h = hashlib.sha256()
        with open(cfg.resolve(cfg.init.params), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out["file_sha256"] = h.hexdigest()
    if params is not None:
        out["params_sha256"] = params_sha256(params)
    return out


def params_sha256(params: dict) -> str:
    """SHA-256 over a projector's tensors (names, dtypes, shapes, bytes, in name order): the digest
    of θ_0 in the ledger's run_start, which a warm start's maker can compute beside it."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(params):
        v = params[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def fresh_projector(kind: str, d_vision: int, d_model: int, seed: int) -> dict:
    """A projector ``kind`` for ``d_vision -> d_model`` from ``seed``: the tensors a silo's
    ``build_projector`` holds for the same seed (one initialisation, :mod:`fedalign.projector`)."""
    import torch

    from fedalign.projector import init_projector

    return init_projector(kind, d_vision, d_model, generator=torch.Generator().manual_seed(seed))


def _reference_config(config, cfg) -> Path:
    """``[reference] config`` for Fed-CMP reliability "reference", checked before anything is written
    (with only ``reference.command`` set: the aggregator's own config, for naming and the working folder)."""
    from fedalign.protocol.errors import ConfigError

    ref = cfg.reference
    if ref.config is None and ref.command:
        return Path(config).resolve() if config else Path.cwd() / "aggregator.toml"  # the command needs no file of ours
    if ref.config is None:
        raise ConfigError(f"{config}: strategy {cfg.strategy.name!r} uses reliability 'reference' (Fed-CMP's default), "
                          "which needs the coordinator's public set: set [reference] config = \"public.toml\" (a "
                          "silo.toml with the silos' models and a public data set, docs/fedcmp.md), or "
                          "strategy.options.reliability = 'off'")
    path = cfg.resolve(ref.config)
    if not path.is_file():
        raise ConfigError(f"{config}: reference.config: {path} not found (a silo.toml for `silo reference`)")
    return path


def params_source(cfg) -> str:
    """Where θ_0 comes from, in words (the handshake's refusal line names it)."""
    init = cfg.init
    if init.params is None:
        return f"init.d_vision = {init.d_vision}, init.d_model = {init.d_model} in the aggregator's config"
    path = cfg.resolve(init.params)
    meta: dict = {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable files fail in initial_params with a clear line
        pass
    made = (f", made by `aggregator init` for vision {meta['vision_tower']!r} and LM {meta['llm']!r}"
            if "vision_tower" in meta and "llm" in meta else "")
    return f"init.params = {path}{made}"


def init_projector(cards: list[Path], out: Path, *, seed: int = 0, overwrite: bool = False) -> dict:
    """θ_0 for the silos whose model cards (``silo describe``) are given: they must agree on the
    projector's kind and sizes; the file records which models it was made for."""
    import json as _json

    from fedalign.host.atomic import atomic_write
    from fedalign.protocol.errors import ConfigError

    if not cards:
        raise ConfigError("aggregator init needs at least one --model-card (from `silo describe --out ...`)")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it (a running federation's θ_0 must not change)")
    got = []
    for c in cards:
        try:
            card = _json.loads(Path(c).read_text())
            got.append((c, card["projector"], int(card["d_vision"]), int(card["d_model"]), card))
        except FileNotFoundError:
            raise ConfigError(f"--model-card {c}: not found (make it with `silo describe --config silo.toml --out {c}`)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--model-card {c}: not a model card from `silo describe` ({e})") from None
    first = got[0]
    for g in got[1:]:
        if g[1:4] != first[1:4]:
            raise ConfigError(f"the silos' models disagree: {first[0]} needs a {first[1]} projector {first[2]} -> "
                              f"{first[3]} (vision {first[4].get('vision_tower')!r}, LM {first[4].get('llm')!r}), "
                              f"{g[0]} needs {g[1]} {g[2]} -> {g[3]} (vision {g[4].get('vision_tower')!r}, LM "
                              f"{g[4].get('llm')!r}); every silo must use the same model sizes and projector")
    _, kind, d_v, d_m, card = first
    params = fresh_projector(kind, d_v, d_m, seed)
    want = {k: tuple(v) for k, v in card.get("shapes", {}).items()}
    have = {k: tuple(v.shape) for k, v in params.items()}
    if want and want != have:
        raise ConfigError(f"--model-card {first[0]}: shapes {want} do not match a {kind} projector {d_v} -> {d_m} "
                          f"({have}); remake the card with this version's `silo describe`")
    from safetensors.torch import save_file

    meta = {"projector": kind, "d_vision": str(d_v), "d_model": str(d_m), "seed": str(seed),
            "vision_tower": str(card.get("vision_tower")), "llm": str(card.get("llm")), "made_by": "aggregator init"}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: save_file({k: v.contiguous() for k, v in params.items()}, str(p), metadata=meta))
    return {"path": out, **meta}


def _insecure_allowed(cfg, flag: bool, what: str) -> bool:
    from fedalign.protocol.errors import InsecureModeRefused

    if not (cfg.server.allow_insecure_plaintext and flag):
        missing = [m for m, ok in (("server.allow_insecure_plaintext = true in the config (site policy)",
                                    cfg.server.allow_insecure_plaintext),
                                   ("--insecure-plaintext on the command line", flag)) if not ok]
        raise InsecureModeRefused(f"{what} is insecure and needs " + " and ".join(missing))
    return True


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def serve_from_config(config: Path, *, insecure_plaintext: bool = False, quiet: bool = False,
                      overrides: dict[str, Any] | None = None, notify: Callable[[str], None] | None = None):
    """Load ``aggregator.toml`` and run (or resume) the federation to its last round; notes for the
    operator go to ``notify`` (default: stderr)."""
    say = notify or _to_stderr
    from fedalign.aggregator.checkpoint import CheckpointStore, RunState, reconcile_ledger
    from fedalign.host.atomic import atomic_write, atomic_write_json
    from fedalign.aggregator.rounds import Coordinator, RoundPolicy
    from fedalign.aggregator.server import ZmqServer
    from fedalign.protocol.config.aggregator import load_aggregator_config
    from fedalign.protocol.config.roster import load_roster
    from fedalign.protocol.errors import CheckpointError, ConfigError
    from fedalign.protocol.keys import load_keypair
    from fedalign.compliance.ledger import Ledger
    from fedalign.crypto.schemes import scheme_spec
    from fedalign.protocol.messages import wire_registry
    from fedalign.fedcmp.strategies import make_strategy, strategy_options

    apply_process_defaults()
    cfg = load_aggregator_config(config, overrides)
    roster = load_roster(cfg.resolve(cfg.server.roster))
    from fedalign.aggregator.audit import check_config, record_run_start

    site_policy = check_config(cfg, list(roster.silos))  # every broken clause in one error, before binding
    if len(roster.silos) < cfg.run.min_silos:
        raise ConfigError(f"{cfg.resolve(cfg.server.roster)}: {len(roster.silos)} silo(s) listed, "
                          f"run.min_silos is {cfg.run.min_silos}")
    scheme = cfg.secure_sum.scheme
    insecure = False
    if scheme_spec(scheme).insecure:
        insecure = _insecure_allowed(cfg, insecure_plaintext, f"secure_sum.scheme = '{scheme}'")
    keypair = None
    if cfg.server.secret_key is None:
        insecure = _insecure_allowed(cfg, insecure_plaintext, "server.secret_key unset (plaintext transport)")
    else:
        keypair = load_keypair(cfg.resolve(cfg.server.secret_key))
    from fedalign.aggregator.audit import load_identity_checked

    identity = load_identity_checked(cfg, roster, keypair)  # signs the ledger, its heads and the receipts
    strategy = make_strategy(cfg.strategy.name, dp=cfg.strategy.dp, **cfg.strategy.options)
    uses_reference = getattr(getattr(strategy, "config", None), "reliability", None) == "reference"
    ref_cfg = _reference_config(config, cfg) if uses_reference else None
    if not uses_reference and (cfg.reference.config or cfg.reference.command) and not quiet:
        say(f"note: {config}: [reference] is set but strategy {strategy.name!r} does not use the coordinator's "
            "public set (Fed-CMP under DP turns reliability off by default; set "
            "strategy.options.reliability = 'reference' to use it)")
    out = cfg.out_dir
    store = CheckpointStore(out / "checkpoints")
    state = store.load()  # reads only: nothing is written before the config is known good
    first_params = initial_params(cfg) if state is None else None  # a bad init.params: refused here
    private_mkdir(out)  # checkpoints and the event log live here: 0700 whatever the umask
    reference = None
    if uses_reference:  # the coordinator's public reference, trained by `silo reference` (docs/fedcmp.md)
        from fedalign.aggregator.reference import ReferenceProcess

        log: list = []  # the event log, once it is open (the first reference is trained before it)

        def ref_line(event: str, fields: dict) -> None:
            if log:
                log[0].emit(event, **fields)
            if not quiet and event in ("reference_ready", "reference_waiting", "reference_restart"):
                say(f"reference: {event.removeprefix('reference_')} "
                    + " ".join(f"{k}={v}" for k, v in fields.items()))

        reference = ReferenceProcess(ref_cfg, out / "reference", first_round=0 if state is None else state.round + 1,
                                     deadline_s=cfg.reference.deadline_s, command=cfg.reference.command,
                                     notify=ref_line)
        reference.start()
        strategy.reference_update = reference
    try:  # a failure before the rounds start must not leave the reference child behind
        meta = {"strategy": cfg.strategy.name, "strategy_options": strategy_options(strategy), "scheme": str(scheme)}
        if state is None:
            assert first_params is not None
            params = first_params
            state = RunState(0, params, strategy.init_public(params), strategy.init_server_state(params), meta=meta)
            source = params_source(cfg)
        else:
            source = f"the checkpoint in {store.state_path.parent} (round {state.round})"
        if {k: state.meta.get(k) for k in meta} != json.loads(json.dumps(meta)):
            raise CheckpointError(f"{store.state_path}: checkpoint was made with {state.meta}, config says {meta}; "
                                  "use a new output.dir or the original settings")
        progress = _Progress(cfg.run.rounds, state.round, quiet=quiet)
        events = _ConsoleLog(out / "aggregator.jsonl", source="aggregator", progress=progress)
        if reference is not None:
            log.append(events)
        ledger = Ledger(out / "ledger.jsonl", identity=identity)
        # a crash between the checkpoint and the ledger append leaves a committed round unrecorded:
        # append it now, marked recovered (and refuse a checkpoint older than the ledger)
        recovered = reconcile_ledger(ledger, state, now=time.time())
        if recovered:
            events.emit("ledger_reconciled", rounds=[e.fields.get("round") for e in recovered])
        record_run_start(ledger, cfg, site_policy, roster, curve_public=keypair.public if keypair else None,
                         resumed_round=state.round, identity=identity, init=theta0_record(cfg, first_params))
        policy = RoundPolicy(
            rounds=cfg.run.rounds, min_silos=cfg.run.min_silos, train_deadline_s=cfg.run.train_deadline_s,
            step_deadline_s=cfg.run.step_deadline_s, heartbeat_timeout_s=cfg.run.heartbeat_timeout_s,
            roster_wait_s=cfg.run.roster_wait_s, report_interval_s=cfg.run.report_interval_s,
            max_failed_rounds=cfg.run.max_failed_rounds, seed=cfg.run.seed,
            scheme=scheme, clip=cfg.secure_sum.clip, neighbours=cfg.secure_sum.neighbours,
            ckks_poly_modulus=cfg.secure_sum.ckks_poly_modulus, allow_insecure_plaintext=insecure,
        )
        server = ZmqServer(cfg.server.bind, keypair=keypair, allowlist=roster.curve_keys(), registry=wire_registry(),
                           max_bytes=cfg.server.max_message_mb << 20, allow_insecure_plaintext=insecure)
        events.emit("listening", endpoint=server.endpoint, resumed_round=state.round, silos=sorted(roster.silos),
                    need=cfg.run.min_silos, wait_s=cfg.run.roster_wait_s, params=source)
    except BaseException:
        if reference is not None:
            reference.close()
        raise
    try:
        coord = Coordinator(server, strategy, strategy_name=cfg.strategy.name, strategy_options=strategy_options(strategy),
                            identities=roster.identities(), policy=policy, state=state, store=store, events=events,
                            ledger=ledger, on_round=progress.update, params_source=source)
        with progress:
            final = coord.run()
            time.sleep(0.5)  # let RunEnd leave the socket before it closes
    finally:
        server.close()
        events.close()
        if reference is not None:
            reference.close()
    from safetensors.torch import save_file

    atomic_write(out / "final_projector.safetensors",
                 lambda p: save_file({k: v.contiguous() for k, v in final.params.items()}, str(p)))
    atomic_write_json(out / "history.json", final.history)
    write_aggregator_card(cfg, config, out, final.params, final.history, scheme=str(scheme),
                          strategy_options=strategy_options(strategy), declared=coord.declared_models)
    return final


def write_aggregator_card(cfg, config: Path, out: Path, params: dict, history: list, *, scheme: str,
                          strategy_options: dict, declared: dict[str, tuple[str, str]] | None = None) -> Path:
    """The model card (README.md, :mod:`fedalign.host.modelcard`) beside ``final_projector.safetensors``:
    what the aggregator knows. It learns only sums, so the silos' record counts are not its to state;
    each silo's ε is the one it reported (the ``epsilon`` of the rounds in history.json, as in the
    ledger's ``round_committed`` entries); δ is not reported to the aggregator. The frozen models are
    those θ_0's metadata names (``aggregator init``), else those the silos declared at join."""
    from fedalign.host.modelcard import ledger_facts, write_card
    from fedalign.projector.keys import projector_kind

    meta: dict = {}
    if cfg.init.params is not None:  # θ_0's metadata may name the frozen models
        try:
            from safetensors import safe_open

            with safe_open(str(cfg.resolve(cfg.init.params)), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001 - the card then says "not recorded"
            meta = {}
    survivors = {int(r["round"]): list(r.get("survivors", [])) for r in history}
    silos = sorted({s for r in history for s in r.get("survivors", [])}
                   | {s for r in history for s in (r.get("epsilon") or {})})
    privacy: dict = {s: {"epsilon": None, "delta": None, "source": "no ε reported to the aggregator"} for s in silos}
    for r in history:
        for s, eps in (r.get("epsilon") or {}).items():
            privacy[s] = {"epsilon": eps, "delta": None, "source": f"reported by {s}, round {r['round']}"}
    ledger = out / "ledger.jsonl"
    facts = {
        "writer": "aggregator",
        **_declared_models(declared or {}),
        **{k: meta[k] for k in ("vision_tower", "llm") if meta.get(k) not in (None, "", "None")},
        **({"models_source": "θ_0's metadata (aggregator init)"} if meta.get("llm") not in (None, "", "None") else {}),
        "projector_kind": _kind_or_none(projector_kind, params),
        "projector_shapes": {k: list(v.shape) for k, v in params.items()},
        "files": ["final_projector.safetensors"],
        "data": {s: "not known to the aggregator: it learns only sums" for s in silos}
                or "not known to the aggregator: it learns only sums",
        "rounds": {"done": len(history), "planned": cfg.run.rounds},
        "silos": silos, "survivors": survivors,
        "scheme": scheme, "strategy": cfg.strategy.name, "strategy_options": strategy_options,
        "privacy": privacy,
        **ledger_facts(ledger),
        "verify_command": f"aggregator audit verify --config {Path(config).name}   # in {Path(config).resolve().parent}",
    }
    return write_card(out, facts)


def _declared_models(declared: dict[str, tuple[str, str]]) -> dict[str, str]:
    """``vision_tower`` / ``llm`` / ``models_source`` facts from the silos' join declarations."""
    out = {}
    for i, key in enumerate(("vision_tower", "llm")):
        names = {s: d[i] for s, d in sorted(declared.items())}
        if len(set(names.values())) == 1:
            out[key] = next(iter(names.values()))
        elif names:
            out[key] = "; ".join(f"{s}: {n}" for s, n in names.items())
    if out:
        out["models_source"] = f"declared by {', '.join(sorted(declared))} at join"
    return out


def _kind_or_none(projector_kind: Any, params: Any) -> str | None:
    """The projector's kind for the card, or None ("not recorded"): θ of another layout (a toy linear
    model, a plugin's projector) is served as well, and the card must not fail a finished run."""
    from fedalign.protocol.errors import ConfigError

    try:
        return projector_kind(params)
    except ConfigError:
        return None


class _ConsoleLog(EventLog):
    """The aggregator's event log, plus one console line for what an operator waits on."""

    def __init__(self, path: Path, *, source: str, progress: "_Progress") -> None:
        super().__init__(path, source=source)
        self.progress = progress

    def emit(self, event: str, **f: Any) -> dict[str, Any]:
        rec = super().emit(event, **f)
        self.progress.event(event, f)
        return rec


class _Progress:
    """A rich progress bar over rounds plus one line per committed round (wire bytes per silo), and
    lines for connections, the wait for silos (who is connected, who is missing, time left) and refusals."""

    def __init__(self, total: int, done: int, *, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True, quiet=quiet, soft_wrap=True, markup=False)  # whole lines; "[model]" is text
        self.bar = Progress(TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=self.console, transient=False)
        self.task = self.bar.add_task("rounds", total=total, completed=done)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def event(self, event: str, f: dict[str, Any]) -> None:
        if event == "listening":
            self.console.print(f"listening on {f['endpoint']} for {len(f['silos'])} silo(s) ({', '.join(f['silos'])}); "
                               f"a round needs {f['need']}, waits up to {f['wait_s']:g}s; θ_0 from {f['params']}")
        elif event == "silo_connected":
            self.console.print(f"silo {f['silo']} connected; connected {', '.join(f['connected'])}; "
                               f"missing {', '.join(f['missing']) or 'none'}")
        elif event == "waiting_for_silos":
            self.console.print(f"round {f['round']}: waiting for silos: connected {', '.join(f['connected']) or 'none'}; "
                               f"missing {', '.join(f['missing']) or 'none'}"
                               + (f"; refused {', '.join(f['refused'])}" if f["refused"] else "")
                               + f"; need {f['need']}; giving up in {f['seconds_left']}s (run.roster_wait_s)")
        elif event == "silo_refused" or (event == "silo_left" and not str(f["reason"]).startswith("refused")):
            self.console.print(f"{event.replace('_', ' ')}: {f['silo']}: {f['reason']}")
        elif event == "run_aborted":
            self.console.print(f"giving up: {f['reason']}; told {', '.join(f['told']) or 'no silo (none connected)'}")

    def update(self, state, record) -> None:
        self.bar.update(self.task, completed=state.round)
        up = ", ".join(f"{s} {record['wire_up_bytes'].get(s, 0):,}B" for s in record["survivors"])
        self.console.print(f"round {record['round']}: {len(record['survivors'])} silos summed, "
                           f"{record['sum_seconds']:.2f}s in sums; wire up per silo: {up}")
