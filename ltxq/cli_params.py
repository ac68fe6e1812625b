"""Click parameter types for the numbers a person types: checked for range and finiteness.

A poll interval of -5, nan or 1e400 seconds is refused at the boundary (exit 2, one line naming
the option), never passed on to `time.sleep` or date arithmetic to fail there with a traceback.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

import click

DAY = 86400.0
MAX_AGE = timedelta(days=36500)  # --older-than: a century; more is a typo (and overflows dates)


class Seconds(click.ParamType):
    """A finite number of seconds in [LOW, HIGH]; LOW itself only with LOW_OK."""

    name = "seconds"

    def __init__(self, low: float = 0.0, high: float = DAY, *, low_ok: bool = False):
        self.low, self.high, self.low_ok = low, high, low_ok

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(number):
            self.fail(f"must be a finite number of seconds, got {value}", param, ctx)
        if number < self.low or (number == self.low and not self.low_ok):
            bound = "at least" if self.low_ok else "more than"
            self.fail(f"must be {bound} {self.low:g} seconds, got {value}", param, ctx)
        if number > self.high:
            self.fail(f"too large: at most {self.high:g} seconds, got {value}", param, ctx)
        return number


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """Parse durations like 7d, 12h, 1w2d, 90m, 30s (at most MAX_AGE); BadParameter if not."""
    pos, total = 0, 0.0
    text = text.strip()
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if pos != len(text) or not text:
        raise click.BadParameter(f"expected a duration such as 7d, 12h, 30m, got {text!r}")
    if not total <= MAX_AGE.total_seconds():  # also inf, from a 400-digit number
        raise click.BadParameter(f"too large: at most {MAX_AGE.days}d, got {text!r}")
    return timedelta(seconds=total)


class Duration(click.ParamType):
    """A duration such as 7d, 12h, 1w2d, 90m or 30s, at most MAX_AGE."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_age(str(value))
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)
