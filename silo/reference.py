"""The coordinator's public reference for Fed-CMP reliability "reference", trained by the silo's own code.

``aggregator serve`` starts ``silo reference --config public.toml`` beside itself when its strategy
uses reliability "reference" (FLTrust's root-data update made public, docs/fedcmp.md). The config
is a silo.toml whose models are the silos' own and whose data is the coordinator's small *public*
set (``data.world.public = true`` for the embedded world, or files); privacy stays off, since
nothing private is in it. Requests and answers follow the line protocol of
:mod:`fedalign.protocol.reference`: each request trains one local round from θ_t (the silos'
trainer settings) on public shard t mod n, with the generator seeded by ``reference_seed(train.seed,
t)`` — the same round gives the same Δ_ref after either side restarts — and writes Δ_ref
atomically. Progress and everything else go to stderr. Files cross this boundary as safetensors only.

The same public set also gives the silos a public basis to train in under DP (``silo public-basis``,
:func:`make_public_basis`): where ``passes`` more passes over it move θ_0, per weight matrix.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import torch

from fedalign.protocol.config.silo import SiloConfig
from fedalign.protocol.errors import ConfigError, DataError, FedAlignError
from fedalign.protocol.reference import answer_line, parse_request, reference_seed
from fedalign.silo.trainer import LocalTrainer, Params, ShardData, TrainSettings, prepare_shard

__all__ = ["ReferenceTrainer", "serve_requests", "make_public_basis", "read_params"]


class ReferenceTrainer:
    """The frozen models, the public set cut into shards of ``data.shard_size``, and a non-DP trainer."""

    def __init__(self, cfg: SiloConfig, *, notify: Callable[[str], None] | None = None) -> None:
        from fedalign.silo.session import load_model, train_settings
        from fedalign.silo.sources import load_inputs

        if cfg.privacy.enabled:
            raise ConfigError(f"{cfg.base_dir}: privacy.enabled = true in the reference's config: the coordinator's "
                              "set is public and its update is broadcast; set privacy.enabled = false")
        self.cfg = cfg
        records = load_inputs(cfg).train
        if not records:
            raise DataError(f"{cfg.base_dir}: the reference's public set is empty (data section)")
        size = max(1, min(cfg.data.shard_size, len(records)))
        n = max(1, len(records) // size)
        self.shards = [records[i * len(records) // n:(i + 1) * len(records) // n] for i in range(n)]
        self.model = load_model(cfg, notify=notify)
        settings: TrainSettings = train_settings(cfg)
        self.trainer = LocalTrainer(self.model, settings, generator=torch.Generator())
        self._prepared: dict[int, ShardData] = {}

    @property
    def n_records(self) -> int:
        return sum(len(s) for s in self.shards)

    def check_params(self, params: Params, what: str) -> None:
        own = {k: tuple(v.shape) for k, v in self.model.projector_state().items()}
        got = {k: tuple(v.shape) for k, v in params.items()}
        if own != got:
            raise ConfigError(f"{what} has tensors {got}; the reference's projector for these models has {own} "
                              "(the reference's [model] must be the silos' models)")

    def shard(self, i: int) -> ShardData:
        if i not in self._prepared:
            self._prepared[i] = prepare_shard(self.model, self.shards[i], shard_index=i)
        return self._prepared[i]

    def update(self, round_id: int, params: Params) -> tuple[Params, int]:
        """Δ_ref for round ``round_id`` from θ_t = ``params``, and the samples it saw."""
        self.check_params(params, f"θ_{round_id}")
        self.trainer.generator.manual_seed(reference_seed(self.cfg.train.seed, round_id))
        res = self.trainer.train_round(params, self.shard(round_id % len(self.shards)))
        return {k: v.detach().cpu().contiguous() for k, v in res.delta.items()}, res.n_samples


def read_params(path: Path, what: str) -> tuple[Params, str]:
    """A projector file in our, LLaVA's or HF Llava's layout (safetensors: no code runs): ``(θ, sha256)``."""
    import hashlib

    from safetensors.torch import load

    from fedalign.projector.keys import to_our_layout

    try:
        data = Path(path).read_bytes()
        state = load(data)
    except Exception as e:  # noqa: BLE001 - any failure is a bad argument
        raise ConfigError(f"{what}: cannot read {path} as safetensors ({e}); give the run's θ_0 file") from None
    return to_our_layout(state), hashlib.sha256(data).hexdigest()


def make_public_basis(cfg: SiloConfig, theta0: Params, rank: int, *, passes: int = 1,
                      notify: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """A public basis for DP training (``[train] public_basis``): per weight matrix, the top-``rank`` left
    singular directions of where ``passes`` passes over the public set in ``cfg`` move θ_0 (privacy off;
    the silos' trainer settings). Measured on OpenClipart against the warm start's own directions:
    results/notes/clipart_sweep.md."""
    from fedalign.silo.subspace import public_basis

    say = notify or (lambda line: None)
    ref = ReferenceTrainer(cfg, notify=notify)
    ref.check_params(theta0, "θ_0")
    ref.trainer.generator.manual_seed(cfg.train.seed)
    params = {k: v.to(ref.model.device) for k, v in theta0.items()}
    for p in range(passes):
        for i in range(len(ref.shards)):
            params = {k: params[k] + d for k, d in ref.trainer.train_round(params, ref.shard(i)).delta.items()}
        say(f"public pass {p + 1}/{passes} over {ref.n_records} records done")
    bases = public_basis({k: v.cpu() for k, v in params.items()}, {k: v.cpu() for k, v in theta0.items()}, rank)
    if not bases:
        raise DataError(f"{cfg.base_dir}: {passes} pass(es) over the public set did not move θ_0, or rank {rank} "
                        "is not below every weight's smaller side; nothing was written")
    return bases


def _reply(out: TextIO, **fields: Any) -> None:
    out.write(answer_line(**fields))
    out.flush()


def _load_no_follow(src: Any) -> dict[str, torch.Tensor]:
    """θ_t from ``src``, opened with O_NOFOLLOW: a symlink (or anything not a regular file) is refused."""
    import stat

    from safetensors.torch import load

    try:
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        hint = "; a symlink is refused" if e.errno == errno.ELOOP else ""
        raise DataError(f"{src}: cannot open the round's θ ({e.strerror}{hint}); the coordinator writes it "
                        "as a plain file in its own folder") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{src}: the round's θ is not a regular file; the coordinator writes a plain file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    return load(data)


def serve_requests(cfg: SiloConfig, stdin: TextIO, stdout: TextIO, *,
                   notify: Callable[[str], None] | None = None) -> int:
    """Load, say ready, then answer requests until stdin closes; returns how many were served."""
    from safetensors.torch import save_file

    from fedalign.host.atomic import atomic_write

    say = notify or (lambda line: None)
    ref = ReferenceTrainer(cfg, notify=say)
    _reply(stdout, ready=True, records=ref.n_records, shards=len(ref.shards))
    say(f"reference ready: {ref.n_records} public records in {len(ref.shards)} shard(s)")
    served = 0
    for line in stdin:
        if not line.strip():
            continue
        t = None
        try:
            t, src, dst = parse_request(line)
            t0 = time.monotonic()
            params = _load_no_follow(src)
            delta, n = ref.update(t, params)
            if not all(bool(torch.isfinite(v).all()) for v in delta.values()):
                raise DataError(f"round {t}: the reference update is not finite (lower train.lr)")
            atomic_write(dst, lambda p: save_file(delta, str(p)))
            secs = time.monotonic() - t0
            say(f"reference for round {t}: {n} samples in {secs:.1f}s")
            _reply(stdout, round=t, ok=True, n_samples=n, seconds=round(secs, 3))
            served += 1
        except (FedAlignError, OSError, ValueError) as e:  # one bad request: say why, keep serving
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            _reply(stdout, round=t, ok=False, error=f"{type(e).__name__}: {msg}")
    return served
