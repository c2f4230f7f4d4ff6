"""A silo's pinned strategy: the strategy name and options it accepts, whatever the aggregator sends.

A RoundStart names a strategy and its resolved options; a silo that rebuilt the strategy from them
verbatim would let the aggregator choose how the silo weighs its own update (Fed-CMP's reliability
floor, κ, smoothing) and so steer what the round's sums reveal. The silo instead resolves its own
strategy from its configuration (``[strategy]`` of silo.toml, bounded by the site policy) and
refuses a RoundStart whose name or options differ: every option must equal the silo's own
resolution, except those the silo names in ``ranges`` (a closed interval) or ``free`` (any value).

Under DP, reliability is refused unless ``allow_reliability_under_dp``: a silo's ρ weighs its
update inside the sums, and a reference the aggregator picks can push every other silo's ρ to 0
(SECURITY.md, "What a round reveals").

Pure: no I/O, no torch beyond what ``make_strategy`` builds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from fedalign.fedcmp.strategies import make_strategy, strategy_options
from fedalign.fedcmp.strategy import Strategy

__all__ = ["StrategyPin", "pin_violations"]


@dataclass(frozen=True)
class StrategyPin:
    """What a silo accepts: ``name`` with ``options`` (its own values), ``ranges`` and ``free`` keys."""

    name: str = "fedcmp"
    options: Mapping[str, Any] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    free: tuple[str, ...] = ()
    dp: bool = False
    allow_reliability_under_dp: bool = False

    def resolve(self) -> Strategy:
        """The strategy this silo would run on its own (ConfigError on unknown names or options)."""
        return make_strategy(self.name, dp=self.dp, **dict(self.options))

    def expected_options(self) -> dict[str, Any]:
        return strategy_options(self.resolve())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b) or (math.isnan(float(a)) and math.isnan(float(b)))
    return a == b


def pin_violations(pin: StrategyPin, name: Any, options: Any) -> list[str]:
    """Every way the aggregator's (``name``, ``options``) breaks ``pin``: one line each, empty if none."""
    if not isinstance(name, str) or name != pin.name:
        return [f"strategy {name!r} is not this silo's pinned strategy {pin.name!r} ([strategy] name)"]
    if not isinstance(options, Mapping):
        return [f"strategy options must be a table, got {type(options).__name__}"]
    want = pin.expected_options()
    problems = []
    for k in sorted(set(want) | set(options)):
        if k not in want:
            problems.append(f"strategy option {k!r} is unknown to {pin.name!r}")
            continue
        if k not in options:
            problems.append(f"strategy option {k!r} is missing (this silo pins {want[k]!r})")
            continue
        got = options[k]
        if k in pin.free:
            continue
        if k in pin.ranges:
            lo, hi = pin.ranges[k]
            ok = isinstance(got, (int, float)) and not isinstance(got, bool) and math.isfinite(float(got)) \
                and lo <= float(got) <= hi
            if not ok:
                problems.append(f"strategy option {k} = {got!r} is outside this silo's range [{lo:g}, {hi:g}]")
            continue
        if not _same(got, want[k]):
            problems.append(f"strategy option {k} = {got!r}, this silo pins {want[k]!r} ([strategy] options)")
    if pin.dp and not pin.allow_reliability_under_dp and options.get("reliability", "off") not in ("off", None):
        problems.append(f"reliability {options.get('reliability')!r} under DP: this silo's policy does not allow it "
                        "([strategy] allow_reliability_under_dp)")
    return problems
