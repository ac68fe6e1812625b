"""Model families behind one small interface: load, encode a prompt, encode a video, one
denoising prediction, and render samples (which decodes).

The trainer's recipe (sigmas, noise, masking, LoRA, checkpoints) is family-independent; what
differs between LTX-Video and the next family (LTX-2: diffusers' `LTX2Pipeline`,
`LTX2VideoTransformer3DModel`, `AutoencoderKLLTX2Video`) lives in one class that implements
`ModelFamily`, registered in `FAMILIES`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers import LTXPipeline

from ltxq.config import ValidationConfig
from ltxq.errors import TrainingError
from ltxq.trainer.models import Components, load_components


class ModelFamily(Protocol):
    """What the trainer asks of a model family; every tensor is on the caller's device."""

    name: str

    def load(self, source: str, **options: Any) -> Components:
        """Load SOURCE's components (options: revision, dtype, device, base, quantization...)."""
        ...

    def encode_prompt(self, components: Components, text: str,
                      max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return TEXT's embeddings [L, D] and mask [L] (float32 and bool, CPU)."""
        ...

    def encode_video(self, components: Components, clip: torch.Tensor) -> torch.Tensor:
        """Return CLIP [3, F, H, W] in [-1, 1] as normalised latents [C, F', H', W'] (CPU)."""
        ...

    def denoise(self, components: Components, latents: torch.Tensor, noisy: torch.Tensor,
                timesteps: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor,
                rope: tuple) -> torch.Tensor:
        """Return the model's velocity prediction for packed NOISY tokens [B, S, C] of
        LATENTS' shape [B, C, F, H, W] at TIMESTEPS [B, S] (sigma * 1000)."""
        ...

    def render(self, components: Components, validation: ValidationConfig, output_dir: Path,
               step: int, should_stop: Callable[[], bool],
               autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
               **kwargs: Any) -> list[Path] | None:
        """Render the validation samples at STEP (denoise and decode); None if stopped."""
        ...


class LTXVideo:
    """LTX-Video 0.9.x (2B and 13B, dev and distilled) through diffusers."""

    name = "ltx-video"

    def load(self, source: str, **options: Any) -> Components:
        return load_components(source, **options)

    def encode_prompt(self, components: Components, text: str,
                      max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ltxq.trainer.preprocess import encode_caption

        return encode_caption(components, text, max_tokens)

    def encode_video(self, components: Components, clip: torch.Tensor) -> torch.Tensor:
        from ltxq.trainer.preprocess import encode_clip

        return encode_clip(components, clip)

    def denoise(self, components: Components, latents: torch.Tensor, noisy: torch.Tensor,
                timesteps: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor,
                rope: tuple) -> torch.Tensor:
        cfg = components.transformer.config
        _, _, f, h, w = latents.shape
        return components.transformer(
            hidden_states=noisy, encoder_hidden_states=embeds, timestep=timesteps,
            encoder_attention_mask=mask, num_frames=f // cfg.patch_size_t,
            height=h // cfg.patch_size, width=w // cfg.patch_size,
            rope_interpolation_scale=rope, return_dict=False)[0]

    @staticmethod
    def pack(latents: torch.Tensor, components: Components) -> torch.Tensor:
        """Return latents [B, C, F, H, W] as the transformer's tokens [B, S, C']."""
        cfg = components.transformer.config
        return LTXPipeline._pack_latents(  # noqa: SLF001 - diffusers' own packing
            latents, cfg.patch_size, cfg.patch_size_t)

    def render(self, components: Components, validation: ValidationConfig, output_dir: Path,
               step: int, should_stop: Callable[[], bool],
               autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
               **kwargs: Any) -> list[Path] | None:
        from ltxq.trainer.validation import render_samples

        return render_samples(components, validation, output_dir, step, should_stop, autocast,
                              **kwargs)


LTX_VIDEO = LTXVideo()
FAMILIES: dict[str, ModelFamily] = {LTX_VIDEO.name: LTX_VIDEO}


def family_of(components: Components) -> ModelFamily:
    """Return the family that COMPONENTS belong to."""
    try:
        return FAMILIES[components.family]
    except KeyError:
        raise TrainingError(f"unknown model family {components.family!r} "
                            f"(known: {', '.join(FAMILIES)})") from None
