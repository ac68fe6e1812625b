"""The learning-rate schedule: linear warmup, then linear (1.0 -> 0.1), cosine or constant."""

from __future__ import annotations

import math

import torch

# Upstream LTX-Video-Trainer decays linearly to a tenth of the peak, not to zero.
LINEAR_END = 0.1


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Return the multiplier of the peak learning rate for optimizer step STEP (0-based)."""
    if step < warmup:
        # (step + 1) so the first step already learns; 1.0 is reached when warmup ends.
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - (1.0 - LINEAR_END) * progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {kind!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup: int,
                   kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    """Wrap OPTIMIZER in a LambdaLR following `lr_factor` (its state_dict holds no code)."""
    lr_factor(0, total, warmup, kind)  # fail on an unknown kind now, not at step 1
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, kind))
