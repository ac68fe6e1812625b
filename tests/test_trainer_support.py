"""Shared helpers of the trainer tests (no tests here): a recording Run, configs, samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ltxq.config import TrainingConfig, parse_config
from ltxq.run import TrainResult
from ltxq.trainer.loop import fit
from ltxq.trainer.lora import remove_lora
from ltxq.trainer.models import Components
from ltxq.trainer.preprocess import PreparedSample

# 32x32x9 frames through the tiny VAE (4x space, 4x time): latents [8, 3, 8, 8], 192 tokens.
LATENT_SHAPE = (8, 3, 8, 8)


class RecordingRun:
    """A Run that records every call; it asks to stop once STOP_AT steps are done."""

    def __init__(self, output_dir: Path, stop_at: int | None = None) -> None:
        self.job_id = None
        self.job_key: str | None = None
        self.output_dir = output_dir
        self.device = "cpu"
        self.stop_at = stop_at
        self.step = 0
        self.stop_checks = 0
        self.progress_calls: list[tuple[int, int, float, float, float]] = []
        self.logs: list[str] = []
        self.checkpoints: list[tuple[Path, int]] = []
        self.samples: list[tuple[Path, int]] = []

    def should_stop(self) -> bool:
        self.stop_checks += 1
        return self.stop_at is not None and self.step >= self.stop_at

    def progress(self, step: int, total: int, loss: float, lr: float,
                 seconds_per_step: float) -> None:
        self.step = step
        self.progress_calls.append((step, total, loss, lr, seconds_per_step))

    def log(self, message: str) -> None:
        self.logs.append(message)

    def checkpoint_saved(self, path: Path, step: int) -> None:
        self.checkpoints.append((path, step))

    def sample_written(self, path: Path, step: int) -> None:
        self.samples.append((path, step))


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in overrides.items():
        out.setdefault(section, {}).update(values)
    return out


BASE = {
    "model": {"source": "tiny-random"},
    "data": {"dataset": "/nonexistent", "resolution": "32x32x9"},
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.1},
    "optimization": {"steps": 12, "learning_rate": 5e-3, "batch_size": 2,
                     "gradient_accumulation_steps": 2, "warmup_steps": 2, "seed": 7,
                     "first_frame_conditioning_p": 0.5},
    "validation": {"prompts": [], "interval": 0, "inference_steps": 2, "video": "32x32x9"},
    "checkpoints": {"interval": 4, "keep_last": 2},
}


def make_config(**overrides: dict[str, Any]) -> TrainingConfig:
    """Return a small CPU config; OVERRIDES maps a section to the keys it changes."""
    return parse_config(merge(BASE, overrides))


def random_samples(count: int = 3, seed: int = 0) -> list[PreparedSample]:
    """Return COUNT samples with random latents and embeddings of the tiny model's shapes."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(count):
        mask = torch.zeros(32, dtype=torch.bool)
        mask[: 4 + i] = True
        samples.append(PreparedSample(torch.randn(LATENT_SHAPE, generator=g),
                                      torch.randn(32, 32, generator=g), mask,
                                      f"caption {i}", f"clip_{i}.mp4"))
    return samples


def fit_clean(config: TrainingConfig, run: RecordingRun, components: Components,
              samples: list[PreparedSample]) -> TrainResult:
    """Run `fit` and take the adapter off again, as `train` does."""
    try:
        return fit(config, run, components, samples)
    finally:
        remove_lora(components.transformer)


def test_preprocessing_reports_progress_at_a_steady_rate() -> None:
    from ltxq.trainer.loop import _preprocess_progress

    lines: list[str] = []
    every_time = _preprocess_progress(lines.append, every=0.0)
    for done in range(4):
        every_time(done, 3)
    assert lines == ["preprocessing: 1/3 media files encoded",
                     "preprocessing: 2/3 media files encoded"]  # not 0/3, not the last
    lines.clear()
    rarely = _preprocess_progress(lines.append, every=3600.0)
    for done in range(4):
        rarely(done, 3)
    assert lines == []
