"""Grids of jobs: several values for some keys make one job per combination.

`ltxq submit job.toml --sweep lora.rank=8,16,32 --sweep optimization.learning_rate=1e-4,2e-4`
and the web form's comma-separated fields both go through `expand`. Values are TOML-typed like
--set (8 is an int, 1e-4 a float, true a bool, other text stays text).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from ltxq.errors import ConfigError
from ltxq.job import load_toml

MAX_GRID = 256  # jobs one sweep may queue: a typo must not queue a million


def toml_value(text: str) -> Any:
    """Parse TEXT as a TOML value (10, 2e-4, true, ["a"]); else keep the text.

    Through the job file's guarded parser: a value nested thousands deep is kept as text (and
    refused by the config's type check), never a RecursionError.
    """
    try:
        return load_toml(f"v = {text}")["v"]
    except ConfigError:
        return text


def parse_sweep(item: str) -> tuple[str, list[Any]]:
    """Parse KEY=V1,V2,... into (KEY, [values]); ConfigError if malformed."""
    key, eq, values = item.partition("=")
    key = key.strip()
    parts = [v.strip() for v in values.split(",")]
    if not eq or not key or not all(parts):
        raise ConfigError(f"expected KEY=V1,V2,..., got {item!r}", key="--sweep")
    return key, [toml_value(v) for v in parts]


def expand(sweeps: Iterable[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Return one overrides dict per combination of the SWEEPS' values (one empty dict if none).

    The first key varies slowest, as in nested loops written in the same order.
    """
    sweeps = list(sweeps)
    keys = [k for k, _ in sweeps]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ConfigError("swept twice", key=dup)
    size = 1
    for _, values in sweeps:
        size *= len(values)
    if size > MAX_GRID:
        raise ConfigError(f"the grid has {size} jobs; at most {MAX_GRID}", key="--sweep")
    combos = itertools.product(*(values for _, values in sweeps))
    return [dict(zip(keys, combo, strict=True)) for combo in combos]


def grid_name(base: str, point: Mapping[str, Any]) -> str:
    """Return a job name that says which grid point this is (BASE alone for no sweep)."""
    if not point:
        return base
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()]
    return f"{base} " + " ".join(parts) if base else " ".join(parts)
