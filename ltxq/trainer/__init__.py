"""The trainer: everything torch, diffusers, peft and accelerate. One entry point, `train`.

This module stays cheap to import (the CLI and the daemon import it): the training stack
loads inside `train`, on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ltxq.outputs import take_output_dir

if TYPE_CHECKING:
    from ltxq.config import TrainingConfig
    from ltxq.run import Run, TrainResult

__all__ = ["train"]


def train(config: TrainingConfig, run: Run) -> TrainResult:
    """Train the LoRA CONFIG describes into run.output_dir, resuming its newest checkpoint.

    Returns COMPLETED or STOPPED (after saving a checkpoint); raises TrainingError for
    problems the user can fix (missing model or data) and for a rank that died, other
    exceptions for bugs. With `resources.processes` > 1 the ranks run under torchrun and
    this process stays their owner (launch.py); otherwise training runs in this process.
    A queue job (run.job_key set) first takes its output folder (ltxq.outputs): one that
    another job owns is refused before anything loads or is written.
    """
    key = getattr(run, "job_key", None)  # Run objects from before job keys have none
    if key is not None:
        take_output_dir(Path(run.output_dir), key, run.job_id)
    if config.resources.processes > 1:
        from ltxq.trainer.launch import train_ranks

        return train_ranks(config, run)
    from ltxq.trainer.loop import train as _train

    return _train(config, run)
