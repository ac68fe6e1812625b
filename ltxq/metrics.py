"""The machine record of a training run: `metrics.jsonl` and `samples.jsonl` in its output folder.

The trainer (rank 0) appends one JSON line per optimizer step to metrics.jsonl (step, time,
loss, lr, grad_norm, s_per_step, samples_seen) and one per validation video to samples.jsonl
(step, prompt_index, prompt, seed, path relative to the output folder). On resume it appends
after what is there, never recording a step (or a step's sample) twice: a resumed run repeats
steps only after a crash between checkpoints, and with the same seed they are the same steps.
Readers (the web dashboard) follow the files by byte offset, never re-reading them whole.
No torch here: the web server imports this module.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
_TAIL = 64 * 1024  # bytes read from the end to find the last recorded step


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _last_step(path: Path) -> int:
    """Return the highest step in the last complete lines of PATH (0 if none)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except FileNotFoundError:
        return 0
    best = 0
    for line in tail.split(b"\n"):
        try:
            best = max(best, int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line, or the cut first one
    return best


class MetricsWriter:
    """Appends a run's metrics and samples lines; created on rank 0 only."""

    def __init__(self, output_dir: Path, clock: Any = time.time):
        self.output_dir = Path(output_dir)
        self.clock = clock
        self._last: int | None = None  # last step in metrics.jsonl, read on first use
        self._samples: set[tuple[int, int]] | None = None

    def _append(self, name: str, record: dict[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, allow_nan=False) + "\n"
        path = self.output_dir / name
        # A line written by a killed process may lack its newline: start a fresh line then.
        with open(path, "ab") as f:
            if f.tell() > 0:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write(b"\n")
            f.write(line.encode())

    def step(self, step: int, loss: float, lr: float, grad_norm: float | None,
             seconds_per_step: float | None, samples_seen: int) -> None:
        """Record optimizer step STEP unless it is recorded already."""
        if self._last is None:
            self._last = _last_step(self.output_dir / METRICS)
        if step <= self._last:
            return
        self._append(METRICS, {"step": step, "time": round(self.clock(), 3),
                               "loss": _finite(loss), "lr": _finite(lr),
                               "grad_norm": _finite(grad_norm),
                               "s_per_step": _finite(seconds_per_step),
                               "samples_seen": samples_seen})
        self._last = step

    def sample(self, step: int, index: int, prompt: str, seed: int, path: Path) -> None:
        """Record validation video INDEX of STEP unless it is recorded already."""
        if self._samples is None:
            self._samples = {(r["step"], r["prompt_index"])
                             for r in read_lines(self.output_dir / SAMPLES, 0)[0]}
        if (step, index) in self._samples:
            return
        try:
            rel = str(Path(path).relative_to(self.output_dir))
        except ValueError:
            rel = Path(path).name
        self._append(SAMPLES, {"step": step, "prompt_index": index, "prompt": prompt,
                               "seed": seed, "path": rel})
        self._samples.add((step, index))


def read_lines(path: Path, offset: int, limit: int = 32 * 1024 * 1024,
               ) -> tuple[list[dict[str, Any]], int]:
    """Read the complete JSON lines of PATH from byte OFFSET; return them and the next offset.

    A partial last line (being written) is left for the next call; a bad line is skipped.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    out = []
    for line in data[:end].split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out, offset + end + 1
