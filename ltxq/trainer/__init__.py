"""The trainer: everything torch, diffusers, peft and accelerate. One entry point, `train`.

This module stays cheap to import (the CLI and the daemon import it): the training stack
loads inside `train`, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    """
    if config.resources.processes > 1:
        from ltxq.trainer.launch import train_ranks

        return train_ranks(config, run)
    from ltxq.trainer.loop import train as _train

    return _train(config, run)
