"""What one training step computes, and on which data: the rectified-flow objective.

`Dataset` holds the prepared samples (latents and caption embeddings) on the CPU and hands out
batches; `Geometry` is the shape and RoPE setting of one resolution bucket; `training_loss` is
upstream LTX-Video-Trainer's loss of one micro-batch; `data_order` chooses how batches are
drawn (any samples together, or one bucket per batch). No optimizer, no checkpoint: the loop
(ltxq/trainer/loop.py) owns those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import LTXPipeline

from ltxq.errors import TrainingError
from ltxq.trainer.models import Components
from ltxq.trainer.preprocess import PreparedSample
from ltxq.trainer.sampling import BucketOrder, DataOrder


@dataclass
class Geometry:
    """Shapes and RoPE settings shared by every batch (one resolution bucket per run)."""

    frames: int            # latent frames
    height: int            # latent height
    width: int             # latent width
    tokens: int            # packed sequence length
    tokens_per_frame: int  # tokens of the first latent frame
    patch_size: int
    patch_size_t: int
    rope_scale: tuple[float, float, float]  # at the default frame rate
    default_rate: float = 25.0
    temporal_ratio: int = 8

    def rope_for(self, frame_rates: torch.Tensor | None, device: torch.device) -> tuple:
        """Return the RoPE scale of a batch whose clips run at FRAME_RATES [B] (fps, CPU).

        The time scale is (temporal compression / fps) per clip, as LTXPipeline computes it
        for one video: a 30 fps clip's frames lie closer in time than a 24 fps clip's.
        """
        if frame_rates is None or bool((frame_rates == self.default_rate).all()):
            return self.rope_scale
        time = (self.temporal_ratio / frame_rates).to(device=device, dtype=torch.float32)
        return (time[:, None, None, None, None], *self.rope_scale[1:])

    @classmethod
    def of(cls, components: Components, latents: torch.Tensor, frame_rate: float) -> Geometry:
        """Describe latents [N, C, F, H, W] for COMPONENTS' transformer."""
        cfg = components.transformer.config
        p, pt = cfg.patch_size, cfg.patch_size_t
        _, _, f, h, w = latents.shape
        vae = components.vae
        return cls(frames=f, height=h, width=w, tokens=(f // pt) * (h // p) * (w // p),
                   tokens_per_frame=(h // p) * (w // p), patch_size=p, patch_size_t=pt,
                   rope_scale=(vae.temporal_compression_ratio / frame_rate,
                               vae.spatial_compression_ratio, vae.spatial_compression_ratio),
                   default_rate=frame_rate, temporal_ratio=vae.temporal_compression_ratio)


@dataclass
class Batch:
    latents: torch.Tensor  # [B, C, F, H, W]
    embeds: torch.Tensor   # [B, L, D]
    mask: torch.Tensor     # [B, L]
    frame_rates: torch.Tensor | None = None  # [B] fps; None: the geometry's default


class Dataset:
    """The prepared samples stacked into tensors on the CPU (moved per batch).

    With several resolution buckets the latents differ in shape: `latents` is then None,
    each sample's tensor is kept on its own, and `BucketOrder` draws each batch from one.
    """

    def __init__(self, samples: list[PreparedSample], default_rate: float = 25.0) -> None:
        if not samples:
            raise TrainingError("no training samples")
        self.shapes = sorted({tuple(s.latents.shape) for s in samples})
        self.each = [s.latents for s in samples]
        self.latents = torch.stack(self.each) if len(self.shapes) == 1 else None
        self.embeds = torch.stack([s.prompt_embeds for s in samples])
        self.mask = torch.stack([s.prompt_mask for s in samples])
        # Each clip's own frame rate (images and files that do not say: DEFAULT_RATE).
        self.frame_rates = torch.tensor([s.frame_rate or default_rate for s in samples],
                                        dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.each)

    @property
    def channels(self) -> int:
        return self.each[0].shape[0]

    def common_frame_rate(self) -> float:
        """Return the most common clip frame rate (the lowest on a tie)."""
        rates, counts = torch.unique(self.frame_rates, return_counts=True)
        return float(rates[counts.argmax()])

    def batch(self, indices: list[int], device: torch.device) -> Batch:
        """Return the samples at INDICES on DEVICE."""
        idx = torch.tensor(indices)
        if self.latents is not None:
            latents = self.latents[idx]
        elif len({tuple(self.each[i].shape) for i in indices}) == 1:
            latents = torch.stack([self.each[i] for i in indices])
        else:  # BucketOrder never draws one; a bug if it does
            raise TrainingError("a batch across resolution buckets")
        return Batch(*(t.to(device, non_blocking=True)
                       for t in (latents, self.embeds[idx], self.mask[idx])),
                     frame_rates=self.frame_rates[idx])  # stays on the CPU (RoPE scale)


def training_loss(transformer: torch.nn.Module, batch: Batch, geometry: Geometry,
                  sigmas: torch.Tensor, noise: torch.Tensor,
                  condition: torch.Tensor) -> torch.Tensor:
    """Return the rectified-flow MSE of one micro-batch.

    noisy = (1 - sigma) * x + sigma * noise, target = noise - x. Tokens where CONDITION
    ([B, S] bool, the first frame) stay clean, get timestep 0 and are left out of the loss.
    SIGMAS [B] and NOISE [B, S, C] are on the batch's device.
    """
    x = LTXPipeline._pack_latents(  # noqa: SLF001 - diffusers' own packing
        batch.latents, geometry.patch_size, geometry.patch_size_t)
    s = sigmas[:, None, None].to(x.dtype)
    noisy = torch.where(condition[..., None], x, (1 - s) * x + s * noise)
    target = noise - x
    # Upstream rounds to integer timesteps; the transformer embeds sigma * 1000.
    timesteps = torch.round(sigmas * 1000.0)[:, None].expand(-1, geometry.tokens)
    timesteps = timesteps.masked_fill(condition, 0.0)
    pred = transformer(
        hidden_states=noisy, encoder_hidden_states=batch.embeds, timestep=timesteps,
        encoder_attention_mask=batch.mask, num_frames=geometry.frames, height=geometry.height,
        width=geometry.width,
        rope_interpolation_scale=geometry.rope_for(batch.frame_rates, x.device),
        return_dict=False)[0]
    keep = (~condition).to(torch.float32)[..., None]
    squared = (pred.float() - target.float()).pow(2) * keep
    return squared.sum() / (keep.sum() * x.shape[-1])


def data_order(data: Dataset, batch: int, seed: int) -> DataOrder | BucketOrder:
    """One bucket: any samples batch together. Several: each batch is drawn from one."""
    if len(data.shapes) == 1:
        return DataOrder(len(data), seed)
    groups = [[i for i, t in enumerate(data.each) if tuple(t.shape) == shape]
              for shape in data.shapes]
    try:
        return BucketOrder(groups, batch, seed)
    except ValueError:
        sizes = ", ".join(str(len(g)) for g in groups)
        raise TrainingError(f"no resolution bucket has a whole batch of {batch} samples "
                            f"(buckets of {sizes}): lower optimization.batch_size") from None
