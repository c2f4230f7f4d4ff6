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

__all__ = ["ReferenceTrainer", "serve_requests"]


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

    def update(self, round_id: int, params: Params) -> tuple[Params, int]:
        """Δ_ref for round ``round_id`` from θ_t = ``params``, and the samples it saw."""
        own = {k: tuple(v.shape) for k, v in self.model.projector_state().items()}
        got = {k: tuple(v.shape) for k, v in params.items()}
        if own != got:
            raise ConfigError(f"θ_{round_id} has tensors {got}; the reference's projector for these models has {own} "
                              "(the reference's [model] must be the silos' models)")
        i = round_id % len(self.shards)
        if i not in self._prepared:
            self._prepared[i] = prepare_shard(self.model, self.shards[i], shard_index=i)
        self.trainer.generator.manual_seed(reference_seed(self.cfg.train.seed, round_id))
        res = self.trainer.train_round(params, self._prepared[i])
        return {k: v.detach().cpu().contiguous() for k, v in res.delta.items()}, res.n_samples


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
