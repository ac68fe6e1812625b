"""The seam between the queue and the trainer: `train(config, run) -> TrainResult`.

The trainer knows nothing about spools; it talks to whoever runs it through a `Run`.
The daemon's `Run` appends progress to the job log and checks control files; `ltxq train`'s
`Run` draws a tqdm bar. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class Outcome(StrEnum):
    """How a call to `train` ended (an error is raised, not returned)."""

    COMPLETED = "completed"   # every step ran; final LoRA written
    STOPPED = "stopped"       # should_stop() said so; a checkpoint was saved


@dataclass(frozen=True)
class TrainResult:
    outcome: Outcome
    step: int                             # optimizer steps done in total
    total_steps: int
    lora_path: Path | None = None         # final pytorch_lora_weights.safetensors
    checkpoint: Path | None = None        # newest complete checkpoint folder
    validation_sample: Path | None = None  # newest validation mp4
    peak_memory_gib: float | None = None  # peak device memory of the job (CPU: resident)


class Run(Protocol):
    """What the trainer may ask of whoever runs it."""

    job_id: int | None          # None for `ltxq train`
    job_key: str | None         # the job's unique [job].key; None for `ltxq train` (no check)
    output_dir: Path            # where every output of this run goes
    device: str | None          # "cuda:1", "cpu", or None = best available

    def should_stop(self) -> bool:
        """Return True once the run must stop (cancel or shutdown); cheap, called every step."""
        ...

    def progress(self, step: int, total: int, loss: float, lr: float,
                 seconds_per_step: float) -> None:
        """Report that STEP of TOTAL optimizer steps finished."""
        ...

    def log(self, message: str) -> None:
        """Record a human-readable event (a skipped clip, a resume, a library warning)."""
        ...

    def checkpoint_saved(self, path: Path, step: int) -> None:
        """Record that a complete checkpoint now exists at PATH."""
        ...

    def sample_written(self, path: Path, step: int) -> None:
        """Record that a validation video was written at PATH."""
        ...
