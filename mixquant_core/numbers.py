"""Every number a user gives, through one parser with one set of bounds.

A CLI option, an environment variable and an app field that mean the same thing accept and refuse
the same values (``--cache-mb nan`` and ``MIXQUANT_CACHE_MB=nan`` alike), and the bounds keep
every one of them from asking for hours of work or gigabytes of memory (a sweep of 10^8 QEM
points). Text is parsed here; NaN and infinities are never a setting.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, Optional, Union

from .errors import MixQuantError

Number = Union[int, float]


@dataclass(frozen=True)
class Bound:
    """A number from ``low`` to ``high`` (``low`` itself excluded when ``above``), whole when ``integer``."""

    low: float
    high: float
    integer: bool = False
    above: bool = False  # low < value, not low <= value

    def range(self) -> str:
        """"between 1 and 10000", "at least 1", "above 0 and at most 10"."""
        low, high = self._show(self.low), self._show(self.high)
        if math.isinf(self.high):
            return f"above {low}" if self.above else f"at least {low}"
        if self.above:
            return f"above {low} and at most {high}"
        return f"between {low} and {high}"

    def _show(self, value: float) -> str:
        return str(int(value)) if self.integer and math.isfinite(value) else f"{value:g}"

    def parse(self, text: Union[str, Number]) -> Number:
        """The value of ``text``, or ValueError saying what was expected (callers name the setting)."""
        raw = str(text).strip()
        try:
            value: Number = int(raw) if self.integer else float(raw)
        except ValueError:
            kind = "a whole number" if self.integer else "a number"
            raise ValueError(f"expected {kind} {self.range()}, got {str(text)[:40]!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {str(text)[:40]!r}")
        too_low = value <= self.low if self.above else value < self.low
        if too_low or value > self.high:
            raise ValueError(f"must be {self.range()}, got {value if self.integer else format(value, 'g')}")
        return value


# name -> its bounds; the CLI's options and the environment variables below use these names.
BOUNDS: Dict[str, Bound] = {
    "steps": Bound(1, 10_000, integer=True),  # QEM points: each is a plan row
    "limit": Bound(1, math.inf, integer=True),  # images (more than the set holds: the whole set)
    "cache_mb": Bound(0, 1e9),  # 0: keep nothing, stream every set
    "calib_images": Bound(1, 100_000, integer=True),
    "iters": Bound(1, 1_000_000, integer=True),
    "batch_size": Bound(1, 65_536, integer=True),
    "lr": Bound(0, 10, above=True),
    "damp": Bound(0, 1, above=True),  # GPTQ's dampening, a fraction of mean(diag H)
    "seed": Bound(0, 2**32 - 1, integer=True),
    "qem": Bound(1, 1e300),
    "max_mb": Bound(0, 1e9, above=True),
    "avg_bits": Bound(0, 32, above=True),
    "max_drop": Bound(0, 100),
    "days": Bound(0, 1e6),  # an age in days (results prune)
    "row_id": Bound(1, 2**63 - 1, integer=True),  # SQLite's integer keys
    "bit_width": Bound(2, 8, integer=True),
    "target_bits": Bound(2, 8),
    "timeout_s": Bound(0, 7 * 86_400, above=True),
    "memory_mb": Bound(0, 1e9, above=True),
    "runs": Bound(1, 10_000, integer=True),  # timed single images of a latency measurement
}

# environment variable -> the bound it shares with its option
ENVIRONMENT = {"MIXQUANT_CACHE_MB": "cache_mb", "MIXQUANT_LOAD_TIMEOUT_S": "timeout_s",
               "MIXQUANT_LOAD_MEMORY_MB": "memory_mb"}


def parse_number(name: str, text: Union[str, Number], shown: Optional[str] = None) -> Number:
    """``text`` as the setting ``name`` (a key of BOUNDS), or one MixQuantError naming it as ``shown``."""
    try:
        return BOUNDS[name].parse(text)
    except ValueError as exc:
        raise MixQuantError(f"{shown or name}: {exc}") from None


def env_number(variable: str, default: Optional[Number] = None) -> Optional[Number]:
    """The environment variable's value under its option's bounds; ``default`` when unset or empty."""
    text = os.environ.get(variable, "")
    if not text.strip():
        return default
    return parse_number(ENVIRONMENT[variable], text, variable)
