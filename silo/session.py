"""One silo assembled from silo.toml: data, one-pass cursor, model, trainer, budget, evaluation.

The networked runtime and the local CLI both build a :class:`SiloSession` and call
``train_round(global_params)`` once per round; ``run_local`` is the aggregator-free loop
(centralized or local-only reference). Order of checks: data, privacy feasibility, models,
so a bad input fails before anything is trained or written.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any, Callable

import torch

from fedalign.projector import layout_mismatch
from fedalign.protocol.config.silo import SiloConfig
from fedalign.protocol.errors import ConfigError, DataError, PrivacyBudgetExceeded
from fedalign.compliance.ledger import Ledger
from fedalign.silo.data import ShardCursor, fingerprint
from fedalign.silo.evaluate import EvalSet, evaluate, no_image_metrics, prepare_eval
from fedalign.silo.model import AlignmentModel, build_projector, load_alignment_model
from fedalign.silo.privacy import DPPlan, DPSettings, PrivacyAccountant, dp_settings, plan_for
from fedalign.silo.sources import SiloInputs, load_inputs, model_paths
from fedalign.silo.trainer import LocalTrainer, Params, RoundResult, TrainSettings, prepare_shard

__all__ = ["SiloSession", "load_model", "train_settings", "run_local", "model_card", "declare_model", "unknown_token_rate", "UNKNOWN_TOKENS_WARN", "UNKNOWN_TOKENS_REFUSE"]

UNKNOWN_TOKENS_WARN = 0.05  # share of caption tokens the LM's tokenizer maps to <unk>: warn above this
UNKNOWN_TOKENS_REFUSE = 0.5  # refuse above this: the LM cannot read these captions at all


def _ledger_identity(cfg: SiloConfig):
    """The silo's Ed25519 identity when its config names one: then every ledger entry is signed,
    and ``silo audit verify --public-key`` (the key in the roster) checks each one."""
    key = cfg.federation.identity_key
    if key is None or not cfg.resolve(key).exists():
        return None
    from fedalign.crypto.identity import load_identity

    return load_identity(cfg.resolve(key))


def train_settings(cfg: SiloConfig) -> TrainSettings:
    """The local trainer's settings from ``[train]``."""
    t = cfg.train
    return TrainSettings(t.batch_size, t.lr, t.optimizer, t.weight_decay, t.local_steps, t.local_epochs,
                         t.physical_batch_size)


def load_model(cfg: SiloConfig, *, notify: Callable[[str], None] | None = None) -> AlignmentModel:
    """The frozen tower and LM named in ``cfg.model`` with a fresh projector (progress lines to ``notify``)."""
    say = notify or (lambda line: None)
    vision, llm = model_paths(cfg, notify=say)
    m = cfg.model
    t0 = time.monotonic()
    say(f"loading the frozen models (vision {vision}, LM {llm}) ...")
    model = load_alignment_model(vision, llm, projector=m.projector, select_layer=m.select_layer,
                                 select_feature=m.select_feature, gguf_file=m.gguf_file,
                                 device=m.device, max_caption_tokens=m.max_caption_tokens)
    say(f"models loaded in {time.monotonic() - t0:.0f}s")
    return model


class SiloSession:
    """Everything one silo needs for a run; all state files live in ``cfg.state_dir``.

    ``group`` (default: the process group of a torchrun silo, :func:`silo.distributed.current`):
    on rank 0 each round is broadcast to the other ranks and trained on rank 0's slice; another
    rank's session writes nothing (no ledger, cursor or accountant file); it only runs :meth:`serve`.
    """

    def __init__(self, cfg: SiloConfig, *, inputs: SiloInputs | None = None, model: AlignmentModel | None = None,
                 clock: Callable[[], float] = time.time, notify: Callable[[str], None] | None = None,
                 group: Any = None, policy: Any = None):
        from fedalign.silo import distributed

        self.group = group if group is not None else distributed.current()
        self.is_main = self.group is None or self.group.is_main
        self.cfg = cfg
        self.clock = clock
        self.notify = (notify or (lambda line: None)) if self.is_main else (lambda line: None)
        self.inputs = inputs if inputs is not None else load_inputs(cfg)
        t, p = cfg.train, cfg.privacy
        self.settings = train_settings(cfg)
        state = cfg.state_dir
        # another rank keeps no ledger (and reads no identity key): it would be a second writer
        self.ledger = Ledger(state / "ledger.jsonl", identity=_ledger_identity(cfg)) if self.is_main else None
        self.accountant: PrivacyAccountant | None = None
        self.dp: DPSettings | None = dp_settings(cfg)
        plan: DPPlan | None = None
        if self.dp is not None:
            self.accountant = PrivacyAccountant(p.epsilon, p.delta, accountant=p.accountant,
                                                state_path=state / "privacy.json", ledger=self.ledger) \
                if self.is_main else PrivacyAccountant(p.epsilon, p.delta, accountant=p.accountant)  # plans only
            # the run's one plan: σ from the budget (or the override, refused if it cannot meet it),
            # before any model loads; the trainer, the policy, the ledger and the log all get this one
            plan = plan_for(self.dp, self.accountant, self.settings, [min(cfg.data.shard_size, len(self.inputs.train))])
            if policy is not None and self.is_main:
                from fedalign.silo.audit import check_plan

                check_plan(cfg, policy, plan)
        self.model = model = model if model is not None else load_model(cfg, notify=self.notify)
        self._check_vocabulary()
        self.basis, self.basis_sha256 = None, None
        self._basis_record: dict[str, Any] = {}  # what the noise's dimension d rests on, for the ledger's dp_plan
        if t.public_basis is not None:  # checked against the projector before any data or ε is used
            from fedalign.silo.subspace import load_basis

            path = cfg.resolve(t.public_basis)
            self.basis, self.basis_sha256 = load_basis(path, model.projector_state())
            ranks = {k: int(v.shape[1]) for k, v in self.basis.items()}
            self._basis_record = {"public_basis": str(path), "public_basis_sha256": self.basis_sha256,
                                  "public_basis_rank": ranks}
            self.notify(f"training in the public basis {path} (sha256 {self.basis_sha256[:16]}…; rank "
                        f"{', '.join(f'{k} {r}' for k, r in ranks.items())})")
        self.trainer = LocalTrainer(model, self.settings, dp=self.dp, accountant=self.accountant,
                                    generator=torch.Generator().manual_seed(t.seed), group=self.group, plan=plan,
                                    basis=self.basis)
        self.dp_plan: DPPlan | None = self.trainer.dp_plan
        if self.dp_plan is not None and self.is_main:
            print(f"[{cfg.federation.silo_id or 'silo'}] {self.dp_plan.describe()}", file=sys.stderr, flush=True)
        self._plan_recorded = False  # the plan goes to the ledger after the run's policy entry
        self._cursor: ShardCursor | None = None
        self._eval: EvalSet | None = None
        self._no_image: dict[str, float] | None = None

    def _check_vocabulary(self) -> None:
        """Captions the LM cannot read (its tokenizer maps them to <unk>) teach the projector nothing."""
        rate, words = unknown_token_rate(self.model, self.inputs.train[:256])
        if rate is None:
            return
        self.inputs.report["unknown_token_rate"] = round(rate, 4)
        llm = self.cfg.model.llm
        hint = (f"{rate:.0%} of caption tokens are unknown to the LM {llm!r} (its tokenizer maps them to <unk>"
                + (f"; e.g. {', '.join(repr(w) for w in words[:4])}" if words else "") + ")")
        if llm == "embedded":
            hint += "; the embedded LM reads only the embedded world's captions: for real captions use a real LM (model.llm)"
        if rate > UNKNOWN_TOKENS_REFUSE:
            raise DataError(f"{self.cfg.data.train or 'data'}: {hint}")
        if rate > UNKNOWN_TOKENS_WARN:
            self.inputs.report.setdefault("warnings", []).append(hint)

    # -- parameters and data ------------------------------------------------------------------
    def initial_params(self) -> Params:
        """A fresh projector from ``train.seed`` (the aggregator's round-0 θ in federated runs)."""
        m = self.model
        p = build_projector(m.projector_kind, m.vision.hidden_size, m.d_model,
                            generator=torch.Generator().manual_seed(self.cfg.train.seed))
        return {k: v.detach().to(m.device) for k, v in p.state_dict().items()}

    @property
    def cursor(self) -> ShardCursor:
        if self._cursor is None:
            self._cursor = ShardCursor(self.cfg.state_dir / "cursor.json", len(self.inputs.train),
                                       fingerprint(self.inputs.train), seed=self.cfg.train.seed,
                                       max_passes=self.cfg.data.max_passes)
        return self._cursor

    @property
    def samples_seen(self) -> int:
        return self.cursor.samples_used

    def rounds_available(self) -> int:
        """How many more shards of ``data.shard_size`` the remaining passes give (the cursor folds a
        tail under half a shard into the previous shard)."""
        st, n, size = self.cursor.state, self.cursor.n, self.cfg.data.shard_size
        def shards(records: int) -> int:  # ShardCursor's own rule, replayed
            a = k = 0
            while a < records:
                b = min(records, a + size)
                a, k = (records if records - b < size // 2 else b), k + 1
            return k
        left = n - st["cursor"]
        out = shards(left) if left > 0 else 0
        return out + (self.cfg.data.max_passes - st["pass"] - 1) * shards(n)

    def declaration(self):
        """What this silo declares at join: its projector's shapes and where its models came from."""
        return declare_model(self.cfg, self.model)

    def check_params(self, params: Params) -> None:
        """θ must fit this silo's projector (ConfigError naming both sizes) before data or ε is used."""
        diff = layout_mismatch({k: v.shape for k, v in self.model.projector_state().items()},
                               {k: v.shape for k, v in params.items()})
        if diff is not None:
            k, own, got = diff
            c = self.cfg.model
            raise ConfigError(
                f"the projector given has {k} {got}; this silo's "
                f"{self.model.projector_kind} for vision {c.vision_tower!r} (d={self.model.vision.hidden_size}) "
                f"and LM {c.llm!r} (d={self.model.d_model}) has {own}; nothing was trained")

    def record_dp_plan(self) -> None:
        """Write the DP plan to the ledger once (after the run's first entry, the site policy; at the
        latest before the first charge)."""
        if self.dp_plan is not None and not self._plan_recorded:
            self.ledger.append("dp_plan", {**asdict(self.dp_plan), **self._basis_record}, now=self.clock())
            self._plan_recorded = True

    def train_round(self, global_params: Params, *, prox_mu: float = 0.0) -> RoundResult:
        """Draw the next fresh shard (persisted first), train on it, return Δ (DP charged).

        θ's shapes and the DP budget are checked before the shard is drawn: a round that cannot
        finish uses no data."""
        assert self.is_main, "only rank 0 draws shards; the other ranks serve()"
        self.check_params(global_params)
        self.record_dp_plan()
        admitted = None
        if self.accountant is not None:  # the round's one budget check, before a shard is drawn
            nxt = self.cursor.peek_shard(self.cfg.data.shard_size)
            admitted = self.trainer.admit(len(nxt.indices), pass_index=nxt.pass_index, shard_index=nxt.shard_index)
        shard = self.cursor.next_shard(self.cfg.data.shard_size)
        if self.group is None:
            data = prepare_shard(self.model, [self.inputs.train[i] for i in shard.indices],
                                 pass_index=shard.pass_index, shard_index=shard.shard_index)
            return self.trainer.train_round(global_params, data, admitted=admitted, prox_mu=prox_mu)
        self.group.send_round(shard.indices, shard.pass_index, shard.shard_index, global_params, prox_mu)
        res = self._train_slice(global_params, list(shard.indices), shard.pass_index, shard.shard_index, prox_mu,
                                admitted)
        self.group.mid_round = False  # stays True when the round failed here: the ranks are not listening
        return res

    def _train_slice(self, params: Params, indices: list[int], pass_index: int, shard_index: int,
                     prox_mu: float, admitted: Any = None) -> RoundResult:
        """This rank's part of a round of a multi-process silo: its contiguous slice of the shard
        (``admitted``: rank 0's admission of the round's charge)."""
        assert self.group is not None
        lo, hi = self.group.chunk(len(indices))
        data = prepare_shard(self.model, [self.inputs.train[i] for i in indices[lo:hi]], pass_index=pass_index,
                             shard_index=shard_index, offset=lo, total=len(indices))
        return self.trainer.train_round(params, data, admitted=admitted, prox_mu=prox_mu)

    def serve(self) -> int:
        """A rank other than 0: train each round rank 0 broadcasts until it says stop; returns the
        number of rounds trained. Nothing is written and nothing leaves this process but collectives."""
        assert self.group is not None and not self.is_main
        template = self.model.projector_state()
        rounds = 0
        while True:
            cmd = self.group.broadcast_json(what="the next command")
            if cmd.get("op") == "stop":
                return rounds
            if cmd.get("op") != "round":
                raise ConfigError(f"rank {self.group.rank}: unknown command from rank 0: {cmd.get('op')!r}")
            self.group.broadcast_([template[k] for k in sorted(template)])
            self._train_slice(template, [int(i) for i in cmd["indices"]], int(cmd["pass_index"]),
                              int(cmd["shard_index"]), float(cmd["prox_mu"]))
            rounds += 1

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, params: Params, *, label: str = "the projector") -> dict[str, float]:
        t0 = time.monotonic()
        self.notify(f"evaluating {label} on {len(self.inputs.heldout)} held-out captions and "
                    f"{len(self.inputs.items)} probe items ...")
        if self._eval is None:
            self._eval = prepare_eval(self.model, self.inputs.heldout, self.inputs.items,
                                      text_only_prompt=self.inputs.text_only_prompt,
                                      batch_size=self.cfg.eval.batch_size)
        self.model.load_projector_state(params)
        out = evaluate(self.model, self._eval, batch_size=self.cfg.eval.batch_size,
                       length_normalize=self.cfg.eval.length_normalize)
        if self._no_image is None:  # the same LM without the image: independent of the projector
            self._no_image = no_image_metrics(self.model, self._eval, batch_size=self.cfg.eval.batch_size,
                                              length_normalize=self.cfg.eval.length_normalize)
        self.notify(f"evaluated in {time.monotonic() - t0:.0f}s")
        return {**out, **self._no_image}

    @property
    def epsilon_spent(self) -> float | None:
        return self.accountant.spent if self.accountant is not None else None


def run_local(session: SiloSession, *, on_round: Callable[[int, RoundResult], None] | None = None
              ) -> tuple[Params, dict[str, Any]]:
    """Train ``train.rounds`` shards without an aggregator (θ ← θ + Δ each round), then evaluate.

    Stops early, cleanly, when the one-pass data is spent or the DP budget would be passed after
    at least one round: the finished rounds are kept (``stopped_by`` and ``stop_detail`` say why),
    and the round that could not finish used no data and no ε (both are checked before a shard
    is drawn).
    """
    cfg = session.cfg
    params = session.initial_params()
    rounds: list[dict[str, Any]] = []
    stopped, detail = "rounds", None
    for r in range(cfg.train.rounds):
        try:
            res = session.train_round(params)
        except DataError as exc:
            if r == 0 or "spent" not in str(exc):
                raise
            stopped, detail = "data_spent", str(exc)
            break
        except PrivacyBudgetExceeded as exc:
            if r == 0:
                raise
            stopped, detail = "privacy_budget", str(exc)
            break
        params = {k: params[k] + res.delta[k] for k in params}
        row = {"round": r, "n_samples": res.n_samples, "epsilon": res.epsilon, **res.metrics}
        rounds.append(row)
        session.ledger.append("round", {"mode": "local", **{k: v for k, v in row.items() if v is not None}},
                              now=session.clock())
        if on_round is not None:
            on_round(r, res)
    metrics = session.evaluate(params, label=f"the projector after {len(rounds)} round(s)")
    summary = {
        **metrics,
        "samples_seen": session.samples_seen,
        "rounds_completed": len(rounds),
        "rounds_planned": cfg.train.rounds,
        "stopped_by": stopped,
        "stop_detail": detail,
        "epsilon_spent": session.epsilon_spent,
        "delta": cfg.privacy.delta if cfg.privacy.enabled else None,
        "dp": asdict(session.dp) if session.dp else None,
        "data": session.inputs.report,
        "rounds": rounds,
    }
    return params, summary


def unknown_token_rate(model: AlignmentModel, samples) -> tuple[float | None, list[str]]:
    """Share of the samples' caption tokens that are the tokenizer's <unk>, and some words that became
    one (None when the tokenizer has no unk token, as byte-level BPE tokenizers)."""
    tok = model.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    if unk is None or not samples:
        return None, []
    total = bad = 0
    words: list[str] = []
    for smp in samples:
        ids = model.encode_text(smp.prompt, smp.caption).caption
        total += len(ids)
        n = sum(1 for i in ids if i == unk)
        bad += n
        if n and len(words) < 8:
            for w in smp.caption.split():
                if unk in tok(w, add_special_tokens=False)["input_ids"] and w not in words:
                    words.append(w)
    return (bad / total if total else 0.0), words


def declare_model(cfg: SiloConfig, model: AlignmentModel):
    """The :class:`ModelDeclaration` of ``model`` built from ``cfg``'s [model] (the join handshake)."""
    from fedalign.protocol.messages import ModelDeclaration

    c = cfg.model
    spec = f" ({cfg.data.world.spec} spec)" if cfg.data.world.spec != "default" else ""
    name = lambda v: f"{v}{spec}" if v == "embedded" else v  # noqa: E731
    return ModelDeclaration(model.projector_kind, {k: tuple(v.shape) for k, v in model.projector_state().items()},
                            name(c.vision_tower), name(c.llm) + (f" [{c.gguf_file}]" if c.gguf_file else ""),
                            int(model.vision.hidden_size), int(model.d_model))


def model_card(cfg: SiloConfig, *, notify: Callable[[str], None] | None = None) -> dict[str, Any]:
    """What ``silo describe`` prints for ``aggregator init``: the projector this silo's [model] needs."""
    vision, llm = model_paths(cfg, notify=notify)
    m = cfg.model
    model = load_alignment_model(vision, llm, projector=m.projector, select_layer=m.select_layer,
                                 select_feature=m.select_feature, gguf_file=m.gguf_file, device="cpu",
                                 max_caption_tokens=m.max_caption_tokens)
    d = declare_model(cfg, model)
    return {"format": "fedalign-model-card/1", "projector": d.projector, "d_vision": d.d_vision,
            "d_model": d.d_model, "shapes": {k: list(v) for k, v in d.shapes.items()},
            "vision_tower": d.vision_tower, "llm": d.llm}
