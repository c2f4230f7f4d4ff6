"""The coordinator's reference update for Fed-CMP reliability "reference", from a child process.

The coordinator holds no models: ``aggregator serve`` starts ``silo reference --config <public.toml>``
(``[reference]`` in aggregator.toml) and uses :class:`ReferenceProcess` as the strategy's
``reference_update`` hook (θ_t -> Δ_ref). Each call writes θ_t as safetensors into the output
folder, sends one JSON request line, waits for the answer (progress every few seconds, the
section's deadline) and reads Δ_ref back as safetensors, checked against θ's names and shapes and
for finite values. A child that dies is started again once per call; a second failure, a refused
request or a missed deadline raise :class:`ReferenceFailed` naming the config and the child's log.

Round t's reference comes from public shard t mod n with a seed fixed by t (silo/reference.py), so
a restarted coordinator asks for the same round number and gets the same Δ_ref.

The child's stderr goes to ``reference.log`` (0600) through the parent, which stops writing at
LOG_MAX_BYTES with one last line saying so (the rest is read and dropped, so the child never
blocks). Δ_ref is opened with O_NOFOLLOW and must be a regular file: a symlink is refused.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from fedalign.protocol.errors import ReferenceFailed
from fedalign.protocol.files import open_new_fd, private_mkdir
from fedalign.protocol.reference import parse_answer, request_line

__all__ = ["ReferenceProcess"]

PROGRESS_S = 10.0
LOG_MAX_BYTES = 16 << 20  # reference.log stops growing here (the child's stderr is not ours to trust)


def _pump_log(src, log_path: Path, limit: int) -> None:
    """Copy the child's stderr to ``log_path`` (appended, 0600, not through a symlink) until the file
    holds ``limit`` bytes; then write one line saying so and drop the rest (still reading it)."""
    try:
        fd = open_new_fd(log_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError:
        fd = None
    try:
        size = os.fstat(fd).st_size if fd is not None else limit
        capped = size >= limit
        for chunk in iter(lambda: src.read1(1 << 16), b""):
            if capped or fd is None:
                continue
            room = limit - size
            if len(chunk) >= room:
                os.write(fd, chunk[:room])
                os.write(fd, f"\n[reference.log reached {limit} bytes: the rest of the child's output is dropped]\n"
                         .encode())
                capped = True
            else:
                os.write(fd, chunk)
            size += len(chunk)
    except (OSError, ValueError):
        pass
    finally:
        if fd is not None:
            os.close(fd)


class ReferenceProcess:
    """θ_t -> Δ_ref through a ``silo reference`` child; call :meth:`start` first, :meth:`close` at the end."""

    def __init__(self, config: Path, workdir: Path, *, first_round: int = 0, deadline_s: float = 600.0,
                 command: list[str] | None = None, notify: Callable[[str, dict[str, Any]], None] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = Path(config)
        self.workdir = Path(workdir)
        self.round = first_round
        self.deadline_s = deadline_s
        self.command = command or [sys.executable, "-m", "fedalign.silo.cli", "reference", "--config", str(self.config)]
        self.notify = notify or (lambda event, fields: None)
        self.env = env
        self.log_path = self.workdir / "reference.log"
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._pump: threading.Thread | None = None

    # -- the child -----------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start the child and wait for its ready line (it loads the frozen models: may take minutes)."""
        private_mkdir(self.workdir)
        try:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, bufsize=1,
                                          env=self.env or os.environ.copy(), cwd=str(self.config.parent))
        except OSError as e:
            raise ReferenceFailed(f"reference.command {self.command[0]!r}: cannot start: {e}") from None
        assert self._proc.stderr is not None
        self._pump = threading.Thread(target=_pump_log, args=(self._proc.stderr.buffer, self.log_path, LOG_MAX_BYTES),
                                      daemon=True, name="reference-log")
        self._pump.start()
        self._lines = queue.Queue()
        threading.Thread(target=self._read, args=(self._proc, self._lines), daemon=True,
                         name="reference-reader").start()
        ready = self._answer("starting (loading the silos' frozen models and the public set)", None)
        if not ready.get("ready"):
            raise self._failed(f"expected a ready line, got {ready}")
        self.notify("reference_ready", {"records": ready.get("records"), "shards": ready.get("shards")})
        return ready

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                ans = parse_answer(line)
            except ValueError:
                ans = line[:200]  # a prefixed line that is not an answer: _answer refuses it
            if ans is not None:
                lines.put(ans)
        lines.put(None)  # EOF: the child exited

    def _answer(self, what: str, round_id: int | None) -> dict[str, Any]:
        t0 = time.monotonic()
        while True:
            left = self.deadline_s - (time.monotonic() - t0)
            if left <= 0:
                self._kill()
                raise self._failed(f"{what}: no answer within reference.deadline_s = {self.deadline_s:g}s", final=True)
            try:
                item = self._lines.get(timeout=min(PROGRESS_S, left))
            except queue.Empty:
                self.notify("reference_waiting", {"round": round_id, "what": what,
                                                  "waited_s": round(time.monotonic() - t0)})
                continue
            if item is None:
                code = self._proc.wait() if self._proc is not None else None
                self._proc = None
                if self._pump is not None:
                    self._pump.join(timeout=5)  # its last words reach the log before we quote it
                raise self._failed(f"{what}: the process exited (code {code})")
            if isinstance(item, str):
                raise self._failed(f"{what}: unreadable answer {item!r}", final=True)
            return item

    def _failed(self, why: str, *, final: bool = False) -> ReferenceFailed:
        """The error naming the config, why and the log's last line; ``final``: starting the child
        again would not help (a deadline missed, a request refused)."""
        tail = ""
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                tail = f"; its last log line: {lines[-1][:300]}"
        except OSError:
            pass
        err = ReferenceFailed(f"the reference process for {self.config}: {why}{tail} (log: {self.log_path})")
        err.final = final  # type: ignore[attr-defined]
        return err

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """Close the child's stdin (it exits after the current request); kill it if it lingers."""
        p, self._proc = self._proc, None
        if p is None:
            return
        try:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            p.kill()
            p.wait()
        if self._pump is not None:
            self._pump.join(timeout=5)

    # -- the hook ------------------------------------------------------------------------------
    def __call__(self, params: dict) -> dict:
        """Δ_ref for the next round from θ_t = ``params`` (the strategy's ``reference_update``)."""
        try:
            return self._request(params)
        except ReferenceFailed as first:
            if getattr(first, "final", False):
                raise
            self.notify("reference_restart", {"round": self.round, "why": str(first)[:300]})
            self.start()
            return self._request(params)

    def _request(self, params: dict) -> dict:
        import torch
        from safetensors.torch import load as load_bytes, save_file

        from fedalign.host.atomic import atomic_write

        if self._proc is None or self._proc.poll() is not None:
            self._proc = None
            raise self._failed("not running")
        t = self.round
        src, dst = self.workdir / "params.safetensors", self.workdir / "reference.safetensors"
        flat = {k: v.detach().cpu().contiguous() for k, v in params.items()}
        atomic_write(src, lambda p: save_file(flat, str(p)))
        dst.unlink(missing_ok=True)
        self.notify("reference_request", {"round": t})
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(request_line(t, src.resolve(), dst.resolve()))
            self._proc.stdin.flush()
        except OSError:
            self._kill()
            raise self._failed(f"round {t}: cannot send the request (the process exited)") from None
        ans = self._answer(f"round {t}'s reference update", t)
        if not ans.get("ok") or ans.get("round") != t:
            why = ans.get("error") or f"an answer for round {ans.get('round')!r}"
            raise self._failed(f"round {t}: {why}", final=True)
        try:
            fd = os.open(dst, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._failed(f"round {t}: {dst} is a symlink; refusing to follow it (Δ_ref must be a regular "
                                   "file the reference process wrote there)", final=True) from None
            raise self._failed(f"round {t}: cannot read {dst}: {e}") from None
        try:
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise self._failed(f"round {t}: {dst} is not a regular file; refusing to read it", final=True)
                data = f.read()
            delta = load_bytes(data)
        except ReferenceFailed:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable file is the child's failure
            raise self._failed(f"round {t}: cannot read {dst}: {e}") from None
        want = {k: tuple(v.shape) for k, v in flat.items()}
        got = {k: tuple(v.shape) for k, v in delta.items()}
        if got != want:
            raise self._failed(f"round {t}: Δ_ref has tensors {got}, θ has {want} (the reference's [model] must be "
                               "the silos' models)", final=True)
        if not all(bool(torch.isfinite(v).all()) for v in delta.values()):
            raise self._failed(f"round {t}: Δ_ref is not finite", final=True)
        self.notify("reference_done", {"round": t, "n_samples": ans.get("n_samples"), "seconds": ans.get("seconds")})
        self.round += 1
        return {k: v.to(params[k].dtype) for k, v in delta.items()}
