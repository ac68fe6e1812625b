"""Validation videos: one mp4 per prompt, rendered with the LoRA as it is now.

The sampler's noise comes from a generator seeded by `validation.seed`, and the global RNG
is forked around it, so rendering a sample never changes the training that follows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.utils import export_to_video

from ltxq.config import ValidationConfig
from ltxq.trainer.models import Components, make_pipeline

SAMPLES_DIR = "samples"


def sample_path(output_dir: Path, step: int, index: int) -> Path:
    """Return where the video of prompt INDEX at STEP goes."""
    return output_dir / SAMPLES_DIR / f"step_{step:06d}_{index}.mp4"


def render_samples(components: Components, validation: ValidationConfig, output_dir: Path,
                   step: int, should_stop: Callable[[], bool],
                   autocast: Callable[[], contextlib.AbstractContextManager] | None = None
                   ) -> list[Path] | None:
    """Render every prompt at STEP into `samples/`; return the paths, or None if stopped.

    SHOULD_STOP is asked between denoising steps; a stopped render writes nothing.
    AUTOCAST makes the mixed-precision context of each render.
    """
    pipe = make_pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    size = validation.size
    stopped = False

    def on_step_end(pipeline, i: int, t: torch.Tensor, kwargs: dict) -> dict:
        nonlocal stopped
        if should_stop():
            stopped = True
            pipeline._interrupt = True  # LTXPipeline skips the remaining denoising steps
        return kwargs

    transformer = components.transformer
    was_training = transformer.training
    transformer.eval()  # no LoRA dropout while sampling
    written = []
    try:
        for index, prompt in enumerate(validation.prompts):
            with torch.random.fork_rng(devices=_cuda_devices(transformer)), \
                    (autocast or contextlib.nullcontext)():
                generator = torch.Generator().manual_seed(validation.seed)
                frames = pipe(
                    prompt=prompt, negative_prompt=validation.negative_prompt,
                    num_frames=size.frames, height=size.height, width=size.width,
                    num_inference_steps=validation.inference_steps,
                    guidance_scale=validation.guidance_scale,
                    max_sequence_length=components.max_sequence_length,
                    frame_rate=validation.frame_rate, generator=generator, output_type="np",
                    callback_on_step_end=on_step_end).frames[0]
            if stopped:
                return None
            written.append(_write_mp4(frames, sample_path(output_dir, step, index),
                                      validation.frame_rate))
    finally:
        transformer.train(was_training)
    return written


def _write_mp4(frames, path: Path, fps: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")  # keeps the .mp4 suffix imageio goes by
    export_to_video(list(frames), str(tmp), fps=fps)
    os.replace(tmp, path)
    return path


def _cuda_devices(module: torch.nn.Module) -> list[int]:
    device = next(module.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []
