"""The `Run` the trainer benchmarks hand to ltxq's loop: it only records when each step ended."""

from __future__ import annotations

import time
from pathlib import Path


class TimingRun:
    """A Run with no log and no stop: `stamps` holds perf_counter() at each step's end."""

    def __init__(self, output_dir: Path, device: str | None = "cpu") -> None:
        self.job_id = None
        self.output_dir = output_dir
        self.device = device
        self.stamps: list[float] = []

    def should_stop(self) -> bool:
        return False

    def progress(self, step: int, total: int, loss: float, lr: float, sps: float) -> None:
        # fit() reads the loss with .item() each step, so a GPU is done when this runs.
        self.stamps.append(time.perf_counter())

    def log(self, message: str) -> None:
        pass

    def checkpoint_saved(self, path: Path, step: int) -> None:
        pass

    def sample_written(self, path: Path, step: int) -> None:
        pass
