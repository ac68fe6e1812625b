"""The training config: one frozen dataclass per TOML section, every field documented.

`TrainingConfig` holds the sections, SECTIONS names them, and `describe_fields` lists their keys
(docs/CONFIG.md, the New-job form, `--help`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ltxq.configs.fields import _doc, _show, _type_name

TINY_RANDOM = "tiny-random"
DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"
TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")  # a model.source that is one checkpoint file
_RESOLUTION = re.compile(r"\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*")


@dataclass(frozen=True)
class Resolution:
    """A resolution bucket, WIDTHxHEIGHTxFRAMES."""

    width: int
    height: int
    frames: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @classmethod
    def parse(cls, text: str) -> Resolution:
        """Parse "768x448x89"; sides multiples of 32, frames 8k+1 (1 for images)."""
        # Jobs name the same few buckets and status validates thousands of jobs: remember the
        # short texts (a hostile megabyte of spaces is parsed, not kept).
        return _parse_known(text) if len(text) <= 40 else _parse_resolution(text)


def _parse_resolution(text: str) -> Resolution:
    m = _RESOLUTION.fullmatch(text)
    if not m:
        raise ValueError(f"expected WIDTHxHEIGHTxFRAMES such as 768x448x89, got {_show(text)}")
    w, h, f = (int(g) for g in m.groups())
    if w <= 0 or h <= 0 or w % 32 or h % 32:
        raise ValueError(f"width and height must be positive multiples of 32, got {w}x{h}")
    if f < 1 or (f - 1) % 8:
        raise ValueError(f"frames must be 8k+1 (1, 9, 17, 25, ...), got {f}")
    return Resolution(w, h, f)


_parse_known = functools.lru_cache(maxsize=256)(_parse_resolution)


@dataclass(frozen=True)
class ModelConfig:
    source: str = _doc("Hub id, local diffusers folder, a single-file checkpoint (.safetensors "
                       "as Lightricks publishes them), or the built-in 'tiny-random'.",
                       "Lightricks/LTX-Video")
    revision: str | None = _doc("Hub revision (branch, tag or commit) of a hub id.", None)
    base: str | None = _doc("For a single-file source: the diffusers folder or hub id whose VAE, "
                            "text encoder, tokenizer, scheduler and configs go with it; unset, "
                            "the one diffusers infers from the checkpoint's keys.", None)
    quantization: str = _doc("Frozen transformer weights: none, int8 or fp8 (weight-only, "
                             "torchao: pip install 'ltxq[quantization]'). fp8 leaves the LoRA "
                             "targets unquantized.", "none", choices=("none", "int8", "fp8"))
    text_encoder_8bit: bool = _doc("Load T5 with int8 weights (torchao) to encode captions.",
                                   False)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _doc("Folder of videos/images with captions; relative to the config file.")
    resolution: str | list[str] = _doc(  # noqa: RUF009 - a field() with a default
        "Bucket WIDTHxHEIGHTxFRAMES (sides multiples of 32, frames 8k+1), or a list of buckets: "
        "each clip goes to the one nearest its aspect ratio that its length fills (most frames "
        "first), e.g. [\"768x512x49\", \"512x768x49\"]; each batch comes from one bucket.",
        "768x448x89")
    frame_rate: float = _doc("Frame rate of clips whose file does not say (images, some GIFs); "
                             "each video's own rate sets its RoPE time scale.", 25.0, min=1.0)
    caption_prefix: str = _doc("Text put before every caption (a trigger word).", "")
    caption_max_tokens: int = _doc("T5 tokens a caption is encoded to (padded or cut; "
                                   "diffusers' max_sequence_length). Upstream uses 256.", 256,
                                   min=8, max=1024)

    @property
    def buckets(self) -> list[Resolution]:
        """Return the resolution buckets, in the order given."""
        texts = [self.resolution] if isinstance(self.resolution, str) else self.resolution
        return [Resolution.parse(t) for t in texts]

    @property
    def bucket(self) -> Resolution:
        """Return the first (with one bucket, the only) resolution bucket."""
        return self.buckets[0]


@dataclass(frozen=True)
class LoraConfig:
    rank: int = _doc("LoRA rank.", 32, min=1, max=1024)
    alpha: float | None = _doc("LoRA alpha; defaults to the rank (scale 1).", None, min=0.0)
    dropout: float = _doc("Dropout on the LoRA path.", 0.0, min=0.0, max=0.99)
    target_modules: list[str] = _doc(  # noqa: RUF009 - a field() with a default_factory
        "Attention projections that get adapters.", list(TARGET_MODULES))

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


@dataclass(frozen=True)
class OptimizationConfig:
    steps: int = _doc("Optimizer steps in total.", 1500, min=1)
    learning_rate: float = _doc("Peak learning rate of AdamW.", 2e-4, min=0.0, max=1.0)
    optimizer: str = _doc("adamw, or adamw8bit (bitsandbytes: pip install 'ltxq[adamw8bit]'; "
                          "optimizer state in 8 bits).", "adamw", choices=("adamw", "adamw8bit"))
    batch_size: int = _doc("Samples per micro-batch.", 1, min=1)
    gradient_accumulation_steps: int = _doc("Micro-batches per optimizer step.", 1, min=1)
    seed: int = _doc("Seed of LoRA init, data order, noise and sigmas.", 42, min=0)
    scheduler: str = _doc("LR schedule after warmup: linear (1.0 -> 0.1), cosine, constant.",
                          "linear", choices=("linear", "cosine", "constant"))
    warmup_steps: int = _doc("Steps of linear warmup from 0.", 0, min=0)
    max_grad_norm: float = _doc("Gradient clipping norm; 0 disables.", 1.0, min=0.0)
    weight_decay: float = _doc("AdamW weight decay.", 0.01, min=0.0)
    timestep_sampling: str = _doc("Sigma sampling: shifted_logit_normal or uniform.",
                                  "shifted_logit_normal",
                                  choices=("shifted_logit_normal", "uniform"))
    first_frame_conditioning_p: float = _doc(
        "Probability that the first frame stays clean and out of the loss.", 0.1,
        min=0.0, max=1.0)
    mixed_precision: str = _doc("auto (bf16 on GPU, fp32 on CPU), no, fp16 or bf16.", "auto",
                                choices=("auto", "no", "fp16", "bf16"))
    gradient_checkpointing: bool = _doc("Recompute activations to save GPU memory.", False)


@dataclass(frozen=True)
class ValidationConfig:
    prompts: list[str] = _doc(  # noqa: RUF009 - a field() with a default_factory
        "Prompts rendered to validation videos; empty disables.", [])
    negative_prompt: str = _doc("Negative prompt of the validation sampler.",
                                DEFAULT_NEGATIVE_PROMPT)
    interval: int = _doc("Steps between validation videos; 0 = only at the end. Unset, it is "
                         "capped at optimization.steps.", 100, min=0)
    inference_steps: int = _doc("Denoising steps per validation video.", 50, min=1)
    guidance_scale: float = _doc("Classifier-free guidance scale.", 3.5, min=0.0)
    video: str = _doc("Validation video size WIDTHxHEIGHTxFRAMES; sides multiples of 32, "
                       "frames 8k+1.", "768x448x89")
    seed: int = _doc("Seed of the validation noise.", 42, min=0)
    frame_rate: float | None = _doc("Frame rate of the written mp4, also the sampler's time "
                                     "scale; unset, the training clips' most common rate.",
                                     None, min=1.0)
    images: list[str] = _doc(  # noqa: RUF009 - a field() with a default_factory
        "One image per prompt, its first frame: image-to-video samples (the condition "
        "pipeline); empty renders text-to-video. Relative to the config file.", [])
    timesteps: list[float] = _doc(  # noqa: RUF009 - a field() with a default_factory
        "Explicit denoising timesteps, e.g. the distilled models' [1000, 993, 987, 981, 975, "
        "909, 725, 0.03]; empty uses inference_steps.", [], min=0.0, max=1000.0)
    decode_timestep: float | None = _doc(
        "VAE decode timestep of a timestep-conditioned (0.9.1+) VAE; unset, 0.05 there (as "
        "Lightricks samples) and 0 for others.", None, min=0.0, max=1.0)
    decode_noise_scale: float | None = _doc(
        "VAE decode noise scale of a 0.9.1+ VAE; unset, 0.025 there (with the default "
        "decode timestep; else the decode timestep) and 0 for others.", None, min=0.0, max=1.0)

    @property
    def size(self) -> Resolution:
        return Resolution.parse(self.video)


@dataclass(frozen=True)
class CheckpointConfig:
    interval: int = _doc("Steps between checkpoints; 0 = only on stop and at the end. Unset, "
                         "it is capped at optimization.steps.", 250, min=0)
    keep_last: int = _doc("Checkpoint folders kept; older ones are deleted.", 2, min=1)


@dataclass(frozen=True)
class OutputConfig:
    root: str = _doc("Folder that holds lora_r{rank}_job{id}/ (or lora_r{rank}_job{id}-2, "
                     "-3... when another job's folder has that name); relative to the config "
                     "file.", "outputs")


@dataclass(frozen=True)
class ResourcesConfig:
    processes: int = _doc("Data-parallel ranks for this job (one per GPU).", 1, min=1, max=64)
    partition: str | None = _doc("Slurm partition (slurm executor only).", None)
    gpus: int | None = _doc("GPUs per Slurm job (default: the daemon's --gpus; at least "
                            "processes when > 0).", None, min=0)
    time_limit: str | None = _doc("Slurm time limit, e.g. 04:00:00.", None)
    sbatch_args: list[str] = _doc("Extra sbatch arguments.", [])  # noqa: RUF009 - as above


@dataclass(frozen=True)
class TrainingConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset=""))
    lora: LoraConfig = field(default_factory=LoraConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


SECTIONS: dict[str, type] = typing.get_type_hints(TrainingConfig)


def describe_fields(sections: Mapping[str, type] | None = None
                    ) -> list[tuple[str, str, Any, str]]:
    """List (key, type, default, doc) of every config field, for docs and `--help`
    (SECTIONS: {name: class}, default the training sections; {"caption": CaptionConfig})."""
    rows = []
    for section, cls in (SECTIONS if sections is None else sections).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else "(required)")
            rows.append((f"{section}.{f.name}", _type_name(hints[f.name]), default,
                         f.metadata.get("doc", "") + _allowed(f.metadata)))
    return rows


def _allowed(meta: Mapping[str, Any]) -> str:
    """Say a field's range for the docs (its choices are named in its text already)."""
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f" Allowed: {low} to {high}."
    return f" Allowed: >= {low}." if low is not None else ""
