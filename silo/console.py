"""What ``silo train`` shows on the terminal: the event log plus one line per milestone and a
spinner while a round trains (stderr)."""

from __future__ import annotations

from typing import Any

from fedalign.compliance.eventlog import EventLog
from fedalign.silo.privacy import clip_hint

__all__ = ["ConsoleEvents"]


class ConsoleEvents(EventLog):
    """The event log, plus one rich line per milestone and a spinner while a round trains (stderr)."""

    def __init__(self, *a: Any, max_grad_norm: float | None = None, **kw: Any) -> None:
        super().__init__(*a, **kw)
        from rich.console import Console

        self.console = Console(stderr=True, soft_wrap=True, markup=False)  # whole lines in logs; "[model]" is text
        self._status: Any = None
        self.max_grad_norm = max_grad_norm  # under DP: the clip hint after a round

    def emit(self, event: str, **f: Any) -> dict[str, Any]:
        rec = super().emit(event, **f)
        if event == "training_started":
            self._status = self.console.status(f"round {f['round']}: training on a fresh shard ...")
            self._status.start()
            return rec
        if self._status is not None and event in ("training_done", "left"):
            self._status.stop()
            self._status = None
        if event == "training_done":
            eps = f" ε {f['epsilon']:.3f}" if f.get("epsilon") is not None else ""
            loss = f" loss {f['train_loss']:.4f}" if "train_loss" in f else ""
            self.console.print(f"round {f['round']}: trained on {f['n_samples']} records{loss}{eps}")
            hint = clip_hint(f, self.max_grad_norm) if self.max_grad_norm is not None else None
            if hint:
                self.console.print(f"round {f['round']}: note: {hint}")
        elif event == "round_end":
            self.console.print(f"round {f['round']}: " + ("committed" if f["committed"] else "abandoned")
                               + ("" if f["included"] else " (without this silo)"))
        elif event == "silo_started":
            self.console.print(f"connecting to the aggregator at {f['address']} ...")
        elif event == "waiting_for_aggregator":
            self.console.print(
                (f"no answer from the aggregator at {f['address']} for {f['silent_s']}s"
                 if not f["answered_before"] else
                 f"no message from the aggregator at {f['address']} for {f['silent_s']}s (others may be training)")
                + f"; still trying, giving up in {f['gives_up_in_s']}s (federation.aggregator_timeout_s)")
        elif event in ("joined", "aggregator_waiting"):
            head = (f"joined the aggregator at {f['address']}" if event == "joined"
                    else "the aggregator is waiting for silos")
            wait = f"; it gives up in {f['gives_up_in_s']}s" if "gives_up_in_s" in f else ""
            self.console.print(f"{head}: connected {', '.join(f['connected']) or 'none'}; "
                               f"missing {', '.join(f['missing']) or 'none'}{wait}")
        elif event == "refused":
            self.console.print(f"refused by the aggregator at {f['address']}: {f['reason']}")
        elif event == "left" and f.get("reason") == "model mismatch":
            pass  # the refusal line above says it
        elif event in ("sum_refused", "sum_failed", "left", "update_reused", "contribution_clipped", "run_end"):
            self.console.print(f"{event}: " + ", ".join(f"{k}={v}" for k, v in f.items()))
        return rec
