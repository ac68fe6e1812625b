"""Validation videos: one mp4 per prompt, rendered with the LoRA as it is now.

The sampler's noise comes from a generator seeded by `validation.seed`, and the global RNG
is forked around it, so rendering a sample never changes the training that follows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import LTXConditionPipeline, LTXPipeline
from diffusers.utils import export_to_video

from ltxq.config import ValidationConfig
from ltxq.errors import TrainingError
from ltxq.trainer.memory import on_device
from ltxq.trainer.models import Components
from ltxq.trainer.preprocess import encode_caption

SAMPLES_DIR = "samples"


def sample_path(output_dir: Path, step: int, index: int) -> Path:
    """Return where the video of prompt INDEX at STEP goes."""
    return output_dir / SAMPLES_DIR / f"step_{step:06d}_{index}.mp4"


@dataclass
class EncodedPrompts:
    """The validation prompts' T5 embeddings, encoded once per run (CPU, float32)."""

    prompts: list[tuple[torch.Tensor, torch.Tensor]]  # ([L, D] embeds, [L] mask) per prompt
    negative: tuple[torch.Tensor, torch.Tensor]


def encode_prompts(components: Components, validation: ValidationConfig,
                   max_tokens: int) -> EncodedPrompts:
    """Encode every validation prompt and the negative prompt (T5 visits the device once)."""
    with on_device(components.text_encoder, components.device):
        return EncodedPrompts(
            prompts=[encode_caption(components, p, max_tokens) for p in validation.prompts],
            negative=encode_caption(components, validation.negative_prompt, max_tokens))


def load_image(path: str):  # -> PIL.Image.Image
    """Open the conditioning image at PATH as RGB (TrainingError when it cannot)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as e:
        raise TrainingError(f"validation.images: cannot read {path}: {e}") from None


def render_samples(components: Components, validation: ValidationConfig, output_dir: Path,
                   step: int, should_stop: Callable[[], bool],
                   autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                   *, prompts: EncodedPrompts | None = None,
                   frame_rate: float | None = None) -> list[Path] | None:
    """Render every prompt at STEP into `samples/`; return the paths, or None if stopped.

    SHOULD_STOP is asked between denoising steps; a stopped render writes nothing.
    AUTOCAST makes the mixed-precision context of each render. With PROMPTS (encoded once)
    no text encoder runs here. With `validation.images`, each prompt's image is the first
    frame (image-to-video through LTXConditionPipeline). The mp4 and the sampler's time scale
    use `validation.frame_rate`, else FRAME_RATE (the data's), else 25.
    """
    size = validation.size
    fps = validation.frame_rate or frame_rate or 25.0
    stopped = False

    def on_step_end(pipeline, i: int, t: torch.Tensor, kwargs: dict) -> dict:
        nonlocal stopped
        if should_stop():
            stopped = True
            pipeline._interrupt = True  # noqa: SLF001 - the pipelines' documented stop flag
        return kwargs

    transformer = components.transformer
    # LTXConditionPipeline: image-to-video, and the only one that takes a timestep list.
    pipe = _pipeline(components, condition=bool(validation.images or validation.timesteps),
                     with_text_encoder=prompts is None)
    pipe.set_progress_bar_config(disable=True)
    was_training = transformer.training
    transformer.eval()  # no LoRA dropout while sampling
    written = []
    try:
        # The VAE comes to the device only to decode (and leaves with the last sample).
        with on_device(components.vae, components.device):
            for index, prompt in enumerate(validation.prompts):
                with torch.random.fork_rng(devices=_cuda_devices(transformer)), \
                        (autocast or contextlib.nullcontext)():
                    generator = torch.Generator().manual_seed(validation.seed)
                    frames = pipe(
                        **_prompt_kwargs(components, prompt, index, validation, prompts),
                        **_sampling_kwargs(validation, components),
                        num_frames=size.frames, height=size.height, width=size.width,
                        guidance_scale=validation.guidance_scale, frame_rate=fps,
                        generator=generator, output_type="np",
                        callback_on_step_end=on_step_end).frames[0]
                if stopped:
                    return None
                written.append(_write_mp4(frames, sample_path(output_dir, step, index), fps))
    finally:
        transformer.train(was_training)
    return written


def _pipeline(components: Components, *, condition: bool,
              with_text_encoder: bool) -> LTXPipeline | LTXConditionPipeline:
    """Wrap COMPONENTS (shared modules, no copies) in LTXPipeline or LTXConditionPipeline."""
    cls = LTXConditionPipeline if condition else LTXPipeline
    return cls(transformer=components.transformer, vae=components.vae,
               text_encoder=components.text_encoder if with_text_encoder else None,
               tokenizer=components.tokenizer if with_text_encoder else None,
               scheduler=components.scheduler)


def _prompt_kwargs(components: Components, prompt: str, index: int,
                   validation: ValidationConfig, prompts: EncodedPrompts | None) -> dict:
    out: dict = {}
    if validation.images:
        out["image"] = load_image(validation.images[index])
    if prompts is None:
        return out | {"prompt": prompt, "negative_prompt": validation.negative_prompt,
                      "max_sequence_length": components.max_sequence_length}
    device, dtype = components.device, components.transformer.dtype
    (embeds, mask), (neg, neg_mask) = prompts.prompts[index], prompts.negative
    return out | {"prompt_embeds": embeds[None].to(device, dtype),
                  "prompt_attention_mask": mask[None].to(device),
                  "negative_prompt_embeds": neg[None].to(device, dtype),
                  "negative_prompt_attention_mask": neg_mask[None].to(device)}


# What Lightricks' own inference uses for timestep-conditioned (0.9.1+) VAEs.
DECODE_TIMESTEP, DECODE_NOISE_SCALE = 0.05, 0.025


def _sampling_kwargs(validation: ValidationConfig, components: Components) -> dict:
    """The denoising schedule and the VAE decode settings (distilled models, 0.9.1+ VAEs)."""
    conditioned = bool(getattr(components.vae.config, "timestep_conditioning", False))
    timestep, noise = validation.decode_timestep, validation.decode_noise_scale
    if timestep is None:
        timestep = DECODE_TIMESTEP if conditioned else 0.0
        noise = (DECODE_NOISE_SCALE if conditioned else 0.0) if noise is None else noise
    out: dict = {"decode_timestep": timestep, "decode_noise_scale": noise}
    if validation.timesteps:
        out["timesteps"] = list(validation.timesteps)
        out["num_inference_steps"] = len(validation.timesteps)
    else:
        out["num_inference_steps"] = validation.inference_steps
    return out


def _write_mp4(frames, path: Path, fps: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")  # keeps the .mp4 suffix imageio goes by
    export_to_video(list(frames), str(tmp), fps=fps)
    os.replace(tmp, path)
    return path


def _cuda_devices(module: torch.nn.Module) -> list[int]:
    device = next(module.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []
