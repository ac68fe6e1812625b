"""The training loop: the upstream LTX-Video-Trainer recipe on cached latents, resumable.

Reading order: `train` (load, prepare, fit, clean up) -> `fit` (set up or resume, then step
until done or stopped) -> `optimizer_step` -> `training_loss` (the rectified-flow objective).
A run is a function of its config and seed: LoRA init, data order, sigmas, noise and the
first-frame coin all come from seeded generators whose states go into every checkpoint, so a
resumed run continues exactly where the checkpoint left off.

The same loop runs as one rank of a data-parallel job when given `distributed.Ranks` of a
process group: each rank keeps its slice of the global batch, gradients are averaged, the
ranks agree on stopping each step, and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import LTXPipeline

from ltxq.config import TrainingConfig
from ltxq.errors import TrainingError
from ltxq.metrics import MetricsWriter
from ltxq.run import Outcome, Run, TrainResult
from ltxq.trainer import checkpoint as ckpt
from ltxq.trainer import export, library_output, warm
from ltxq.trainer.device import (
    make_accelerator,
    resolve_device,
    resolve_precision,
    weight_dtype,
)
from ltxq.trainer.distributed import Ranks
from ltxq.trainer.family import family_of
from ltxq.trainer.lora import (
    adapter_metadata,
    add_lora,
    load_lora_state_dict,
    lora_state_dict,
    remove_lora,
)
from ltxq.trainer.memory import PeakMemory, make_optimizer
from ltxq.trainer.models import Components, load_options
from ltxq.trainer.preprocess import PreparedSample, prepare_dataset
from ltxq.trainer.sampling import (
    BucketOrder,
    DataOrder,
    Generators,
    first_frame_mask,
    sample_sigmas,
)
from ltxq.trainer.schedule import make_scheduler
from ltxq.trainer.validation import (
    SAMPLES_DIR,
    EncodedPrompts,
    encode_prompts,
    sample_path,
)

CHECKPOINTS_DIR = "checkpoints"
_SPS_SMOOTHING = 0.1  # weight of the newest step in the s/step average


def train(config: TrainingConfig, run: Run, ranks: Ranks | None = None) -> TrainResult:
    """Train the LoRA CONFIG describes, continuing from the newest checkpoint in run.output_dir.

    RANKS places this process in a data-parallel run (default: the only process).
    """
    ranks = ranks or Ranks()
    device = resolve_device(run.device)
    precision = resolve_precision(config.optimization.mixed_precision, device)
    peak = PeakMemory(device)
    # Library warnings belong to this job's log, not to the stderr of a daemon running many.
    with library_output.routed_to(run.log), warm.components(
            config.model.source, revision=config.model.revision, dtype=weight_dtype(precision),
            device=device, log=run.log, **load_options(config)) as components:
        try:
            # Rank 0 fills the preprocessing cache; the others then read it instead of racing.
            with ranks.main_first():
                samples = prepare_dataset(config, components, log=run.log,
                                          progress=_preprocess_progress(run.log))
            return fit(config, run, components, samples, device=device, precision=precision,
                       ranks=ranks, peak=peak)
        finally:
            remove_lora(components.transformer)



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


@dataclass
class Trainer:
    """The live state of one run: what a checkpoint saves and restores."""

    config: TrainingConfig
    run: Run
    components: Components
    data: Dataset
    geometry: Geometry
    device: torch.device
    accelerator: object
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generators: Generators
    order: DataOrder | BucketOrder
    ranks: Ranks
    prompts: EncodedPrompts | None = None  # validation prompts, encoded once (rank 0)
    step: int = 0
    grad_norm: float | None = None  # of the last optimizer step, before clipping
    metrics: MetricsWriter | None = None  # metrics.jsonl / samples.jsonl (rank 0 only)

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir)

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / CHECKPOINTS_DIR

    # --- one optimizer step -------------------------------------------------------------

    def optimizer_step(self) -> tuple[float, float]:
        """Run one optimizer step over the accumulated micro-batches; return (loss, lr)."""
        opt = self.config.optimization
        lr = self.scheduler.get_last_lr()[0]
        total = torch.zeros((), device=self.device)
        for _ in range(opt.gradient_accumulation_steps):
            loss = self.micro_batch_loss()
            self.accelerator.backward(loss / opt.gradient_accumulation_steps)
            total += loss.detach()
        # Ranks average their gradients (and losses) before clipping, so all step alike.
        total = self.ranks.average(self.params, total)
        if opt.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(self.params, opt.max_grad_norm)
            self.grad_norm = float(norm) if norm is not None else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total.item() / opt.gradient_accumulation_steps, lr

    def micro_batch_loss(self) -> torch.Tensor:
        """Draw a batch, its sigmas, noise and first-frame coins, and return its loss."""
        opt = self.config.optimization
        # Every rank draws the whole global batch from the shared streams and keeps its own
        # slice: the streams stay in step on every rank (and in a checkpoint), and N ranks
        # see what one process with an N times larger batch would.
        n = opt.batch_size * self.ranks.count
        mine = self.ranks.shard(opt.batch_size)
        batch = self.data.batch(self.order.take(n)[mine], self.device)
        # One bucket: the run's geometry; several: the batch's (one sample's) bucket.
        g = self.geometry_of(tuple(batch.latents.shape[1:]))
        sigmas = sample_sigmas(n, g.tokens, opt.timestep_sampling, self.generators.sigma)[mine]
        noise = torch.randn((n, g.tokens, self.data.channels),
                            generator=self.generators.noise)[mine]
        # Always draw the coins, so p = 0 and p > 0 runs see the same noise stream.
        coins = torch.rand(n, generator=self.generators.condition)[mine]
        # A one-frame bucket (images) has nothing left to learn from if its frame is clean.
        p = opt.first_frame_conditioning_p if g.frames > 1 else 0.0
        condition = first_frame_mask(coins < p, g.tokens, g.tokens_per_frame)
        with self.accelerator.autocast():
            return training_loss(self.components.transformer, batch, g,
                                 sigmas.to(self.device), noise.to(self.device),
                                 condition.to(self.device))

    def geometry_of(self, shape: tuple[int, ...]) -> Geometry:
        """Return the geometry of latents of SHAPE [C, F, H, W] (the run's, or a bucket's)."""
        if shape == tuple(self.data.shapes[0]) and len(self.data.shapes) == 1:
            return self.geometry
        return Geometry.of(self.components, torch.empty((1, *shape), device="meta"),
                           self.config.data.frame_rate)

    # --- checkpoints --------------------------------------------------------------------

    def fingerprint(self) -> dict:
        """Return the adapter's identity: a checkpoint with another one cannot continue."""
        lora = self.config.lora
        return {"rank": lora.rank, "alpha": lora.effective_alpha,
                "target_modules": list(lora.target_modules)}

    def settings(self) -> dict[str, Any]:
        """Return the settings that shape the weights, as flat `section.key` -> JSON value.

        Model, data, LoRA, optimization (steps and schedule included) and resources.processes;
        not validation, checkpoints, output or job settings. A checkpoint records them, and a
        resume with other values is refused: it would continue a run those values did not make.
        """
        c = self.config
        out: dict[str, Any] = {}
        sections = {"model": c.model, "data": c.data, "lora": c.lora,
                    "optimization": c.optimization}
        for name, section in sections.items():
            for key, value in dataclasses.asdict(section).items():
                if (name, key) == ("optimization", "gradient_checkpointing"):
                    continue  # memory only: the same weights (tested)
                out[f"{name}.{key}"] = value
        out["lora.alpha"] = c.lora.effective_alpha
        # Ranks x per-rank batch is the step's batch: a 2-rank checkpoint of batch 1 resumes
        # in one process of batch 2 (a killed rank's run finished alone), so compare the product.
        del out["optimization.batch_size"]
        out["optimization.batch_size*resources.processes"] = (c.optimization.batch_size
                                                              * c.resources.processes)
        # Through JSON, so tuples and lists (and the values read back) compare equal.
        return json.loads(json.dumps(out, default=str))

    def save_checkpoint(self) -> ckpt.Checkpoint | None:
        """Save the complete state at the current step (a no-op if it already exists).

        Only rank 0 writes (every rank holds the same state); the others get None.
        """
        if not self.ranks.is_main:
            return None
        existing = ckpt.latest(self.checkpoint_root)
        if existing is not None and existing.step == self.step:
            return existing
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generators": self.generators.state_dict(),
            "data_position": self.order.position,
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        meta = {"total_steps": self.config.optimization.steps,
                "seed": self.config.optimization.seed, "model": self.components.source,
                "fingerprint": self.fingerprint(), "settings": self.settings()}
        saved = ckpt.save(self.checkpoint_root, self.step,
                          lora_state_dict(self.components.transformer), state, meta,
                          self.config.checkpoints.keep_last)
        # The Run logs it (one line per checkpoint) and records it where it belongs.
        self.run.checkpoint_saved(saved.path, self.step)
        return saved

    def check_meta(self, found: ckpt.Checkpoint, meta: dict[str, Any]) -> None:
        """Refuse FOUND (TrainingError, one line) if it was trained with other settings."""
        theirs, ours = meta.get("fingerprint", {}), self.fingerprint()
        if theirs != ours:
            diff = ", ".join(f"{k} {theirs.get(k)!r} -> {ours[k]!r}" for k in ours
                             if theirs.get(k) != ours[k])
            raise TrainingError(f"{found.path} belongs to another LoRA ({diff}): use another "
                                f"output folder, or delete {self.checkpoint_root}")
        recorded = meta.get("settings")
        if isinstance(recorded, dict):  # older checkpoints have no record: resume as before
            ours_s = self.settings()
            diff = [f"{k} {recorded[k]!r} -> {ours_s[k]!r}" for k in sorted(ours_s)
                    if k in recorded and recorded[k] != ours_s[k]]
            if diff:
                raise TrainingError(
                    f"{found.path} was trained with other settings ({', '.join(diff)}): "
                    f"resuming would continue a run this config did not make; use a new "
                    f"--output-dir (or restore the old settings, or delete "
                    f"{self.checkpoint_root})")
        if found.step > self.config.optimization.steps:
            raise TrainingError(
                f"{found.path} is at step {found.step}, past this config's "
                f"{self.config.optimization.steps} steps: use a new --output-dir")
        if meta.get("seed") != self.config.optimization.seed:
            self.run.log(f"note: the checkpoint was trained with seed {meta.get('seed')}")
        if meta.get("model") != self.components.source:
            # A moved model folder is the usual cause; the weights may still be the same.
            self.run.log(f"note: the checkpoint was trained on {meta.get('model')}")

    def read_checkpoint(self, found: ckpt.Checkpoint) -> tuple[dict, dict]:
        """Read FOUND whole (meta checked, LoRA and state) before anything is changed.

        A damaged file raises `DamagedCheckpoint`; other settings raise TrainingError.
        """
        try:
            meta = found.meta()
            if not isinstance(meta, dict):
                raise TypeError("meta.json is not an object")
        except Exception as e:  # unreadable in any way is damaged
            raise DamagedCheckpoint(f"{ckpt.META_FILE}: {type(e).__name__}: {e}") from e
        self.check_meta(found, meta)
        try:
            lora = found.lora()
        except Exception as e:  # SafetensorError derives from Exception
            raise DamagedCheckpoint(f"{ckpt.LORA_FILE}: {type(e).__name__}: {e}") from e
        expected = lora_state_dict(self.components.transformer)
        bad = [k for k in expected if k not in lora or lora[k].shape != expected[k].shape]
        if bad or set(lora) != set(expected):
            raise DamagedCheckpoint(f"{ckpt.LORA_FILE}: does not hold this adapter's weights")
        try:
            state = found.state()
            missing = [k for k in _STATE_KEYS if k not in state]
            if missing:
                raise KeyError(f"missing {missing}")
            if int(state["step"]) != found.step:
                raise ValueError(f"it says step {int(state['step'])}")
        except Exception as e:  # a truncated zip, a bad pickle opcode, ...
            raise DamagedCheckpoint(f"{ckpt.STATE_FILE}: {type(e).__name__}: {e}") from e
        return lora, state

    def restore(self, found: ckpt.Checkpoint, loaded: tuple[dict, dict] | None = None) -> None:
        """Continue from FOUND: LoRA weights, optimizer, schedule, RNG and data position."""
        lora, state = loaded if loaded is not None else self.read_checkpoint(found)
        load_lora_state_dict(self.components.transformer, lora)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generators.load_state_dict(state["generators"])
        self.order.position = int(state["data_position"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step = int(state["step"])
        if self.step >= self.config.optimization.steps:
            self.run.log(f"{found.path}: already complete at step {self.step}")
        else:
            self.run.log(f"resuming from {found.path} (step {self.step} of "
                         f"{self.config.optimization.steps})")

    # --- validation ---------------------------------------------------------------------

    def validation_due(self) -> bool:
        """Tell whether samples belong to this step and are not on disk yet."""
        val = self.config.validation
        # Only rank 0 renders; the others wait for it at the next agreement.
        if not val.prompts or self.step == 0 or not self.ranks.is_main:
            return False
        due = self.step >= self.config.optimization.steps or (
            val.interval > 0 and self.step % val.interval == 0)
        return due and not all(sample_path(self.output_dir, self.step, i).is_file()
                               for i in range(len(val.prompts)))

    def validate(self) -> bool:
        """Render this step's samples; return False if a stop request cut it short."""
        start = time.monotonic()
        written = family_of(self.components).render(
            self.components, self.config.validation, self.output_dir, self.step,
            self.run.should_stop, self.accelerator.autocast, prompts=self.prompts,
            frame_rate=self.data.common_frame_rate())
        if written is None:
            self.run.log(f"validation at step {self.step} interrupted by a stop request")
            return False
        val = self.config.validation
        for index, path in enumerate(written):
            self.run.sample_written(path, self.step)
            if self.metrics is not None:
                self.metrics.sample(self.step, index, val.prompts[index], val.seed, path)
        self.run.log(f"{len(written)} validation video(s) at step {self.step} "
                     f"in {time.monotonic() - start:.1f} s")
        return True

    # --- the loop -----------------------------------------------------------------------

    def loop(self) -> Outcome:
        """Step until the last step or a stop request; checkpoint and validate on schedule."""
        total = self.config.optimization.steps
        interval = self.config.checkpoints.interval
        sps = None
        self.components.transformer.train()
        while True:
            interrupted = self.validation_due() and not self.validate()
            # One agreement per step (`any` is collective): every rank stops at the same
            # step, so none is left waiting for a peer that has already stopped.
            if self.step >= total:
                return Outcome.STOPPED if self.ranks.any(interrupted) else Outcome.COMPLETED
            if self.ranks.any(interrupted or self.run.should_stop()):
                return Outcome.STOPPED
            start = time.monotonic()
            loss, lr = self.optimizer_step()
            if interval and self.step % interval == 0:
                self.save_checkpoint()
            took = time.monotonic() - start
            sps = took if sps is None else sps + _SPS_SMOOTHING * (took - sps)
            self.run.progress(self.step, total, loss, lr, sps)
            if self.metrics is not None:
                opt = self.config.optimization
                self.metrics.step(self.step, loss, lr, self.grad_norm, took, self.step
                                  * opt.batch_size * opt.gradient_accumulation_steps
                                  * self.ranks.count)



def _preprocess_progress(log: Callable[[str], None],
                         every: float = 10.0) -> Callable[[int, int], None]:
    """Log "preprocessing k/N" at most every EVERY seconds: encoding a real dataset takes
    minutes, and the log (and status) would otherwise look stuck."""
    last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if 0 < done < total and now - last >= every:
            log(f"preprocessing: {done}/{total} media files encoded")
            last = now
    return report

def fit(config: TrainingConfig, run: Run, components: Components,
        samples: list[PreparedSample], *, device: torch.device | None = None,
        precision: str | None = None, ranks: Ranks | None = None,
        peak: PeakMemory | None = None) -> TrainResult:
    """Train a fresh LoRA on COMPONENTS' transformer over SAMPLES (or continue one).

    The caller removes the adapter afterwards (`lora.remove_lora`). With RANKS, only rank 0
    writes to run.output_dir and only its result names files. PEAK (started by the caller
    before preprocessing; else here) measures the job's peak memory.
    """
    ranks = ranks or Ranks()
    device = device or resolve_device(run.device)
    peak = peak or PeakMemory(device)
    precision = precision or resolve_precision(config.optimization.mixed_precision, device)
    output_dir = Path(run.output_dir)
    if ranks.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        export.remove_stale_tmp(output_dir)
    trainer = _set_up(config, run, components, samples, device, precision, ranks)
    found = _load_checkpoint(trainer, ranks)
    if found is None:
        run.log(f"training {config.optimization.steps} steps on {len(trainer.data)} samples, "
                f"{device}, mixed precision {precision}, LoRA rank {config.lora.rank}"
                + (f", {ranks.count} ranks" if ranks.count > 1 else ""))
    if ranks.is_main:
        export.save_config(output_dir, config)
    outcome = trainer.loop()
    saved = trainer.save_checkpoint()
    lora_path = None
    if outcome is Outcome.COMPLETED and ranks.is_main:
        lora_path = export.save_lora(output_dir, lora_state_dict(components.transformer),
                                     adapter_metadata(components.transformer))
        export.save_comfy_copy(lora_path)
        run.log(f"LoRA written: {lora_path}")
    peak_gib = peak.gib()
    if peak_gib is not None:
        what = "GPU memory allocated" if device.type == "cuda" else "resident memory (CPU)"
        run.log(f"peak {what}: {peak_gib:.2f} GiB")
    return TrainResult(outcome=outcome, step=trainer.step, total_steps=config.optimization.steps,
                       lora_path=lora_path, checkpoint=saved.path if saved else None,
                       validation_sample=newest_sample(output_dir),
                       peak_memory_gib=None if peak_gib is None else round(peak_gib, 3))


class DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be read back (truncated, corrupt, wrong contents)."""


_STATE_KEYS = ("step", "optimizer", "scheduler", "generators", "data_position", "torch_rng")


def _load_checkpoint(trainer: Trainer, ranks: Ranks) -> ckpt.Checkpoint | None:
    """Restore TRAINER from the newest checkpoint that reads back whole; None if none does.

    Rank 0 chooses: a damaged one is logged and moved aside (never deleted), and the next
    older is tried. Every rank then loads the one rank 0 chose.
    """
    root, log = trainer.checkpoint_root, trainer.run.log
    chosen: tuple[ckpt.Checkpoint, tuple[dict, dict]] | None = None
    refused: TrainingError | None = None
    if ranks.is_main:
        damaged = False
        for found in reversed(ckpt.list_checkpoints(root)):
            try:
                chosen = found, trainer.read_checkpoint(found)
                break
            except DamagedCheckpoint as e:
                damaged = True
                log(f"checkpoint {found.path.name} is damaged ({e}); trying the previous one")
                _move_aside(found, log)
            except TrainingError as e:  # other settings: tell the other ranks, then raise
                refused = e
                break
        if chosen is None and damaged and refused is None:
            log("no checkpoint could be loaded: starting from scratch")
    step = ranks.from_main(-2 if refused is not None else
                           chosen[0].step if chosen is not None else -1)
    if refused is not None:
        raise refused
    if step == -2:
        raise TrainingError("rank 0 refused the checkpoint (see its log)")
    if step < 0:
        return None
    if chosen is None:  # another rank: read what rank 0 read
        found = ckpt.Checkpoint(root / ckpt.folder_name(step), step)
        chosen = found, trainer.read_checkpoint(found)
    trainer.restore(*chosen)
    return chosen[0]


def _move_aside(found: ckpt.Checkpoint, log: Callable[[str], None]) -> None:
    """Rename a damaged checkpoint out of the step_* names (kept for a look, never pruned)."""
    aside = found.path.with_name(f"damaged-{found.path.name}-{secrets.token_hex(3)}")
    try:
        os.rename(found.path, aside)
    except OSError as e:
        log(f"could not move {found.path} aside ({e})")
    else:
        log(f"moved it aside to {aside}")


def _set_up(config: TrainingConfig, run: Run, components: Components,
            samples: list[PreparedSample], device: torch.device, precision: str,
            ranks: Ranks) -> Trainer:
    opt = config.optimization
    accelerator = make_accelerator(precision, device)
    # The global RNG drives LoRA dropout; seed it per run (a warm daemon ran other jobs).
    # Every rank uses the same stream, so the one state in a checkpoint resumes them all.
    torch.manual_seed(opt.seed)
    transformer = components.transformer
    params = add_lora(transformer, config.lora, opt.seed)
    if opt.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    optimizer = make_optimizer(params, opt)
    # Not handed to accelerate: its wrapper steps once per process, our schedule counts steps.
    scheduler = make_scheduler(optimizer, opt.steps, opt.warmup_steps, opt.scheduler)
    optimizer = accelerator.prepare_optimizer(optimizer, device_placement=False)
    data = Dataset(samples, config.data.frame_rate)
    # Validation prompts are encoded once, here (T5 visits the device only for this).
    prompts = (encode_prompts(components, config.validation, config.data.caption_max_tokens)
               if config.validation.prompts and ranks.is_main else None)
    return Trainer(
        prompts=prompts, config=config, run=run, components=components, data=data,
        geometry=Geometry.of(components, torch.empty((1, *data.shapes[0]), device="meta"),
                             config.data.frame_rate), device=device,
        accelerator=accelerator, params=params, optimizer=optimizer, scheduler=scheduler,
        generators=Generators.seeded(opt.seed), order=_data_order(data, opt.batch_size
                                                                  * ranks.count, opt.seed),
        ranks=ranks, metrics=MetricsWriter(Path(run.output_dir)) if ranks.is_main else None)


def _data_order(data: Dataset, batch: int, seed: int) -> DataOrder | BucketOrder:
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


_SAMPLE_NAME = re.compile(r"step_(\d+)_(\d+)\.mp4")


def newest_sample(output_dir: Path) -> Path | None:
    """Return the validation video of the highest step (first prompt first), if any."""
    found = []
    for path in (output_dir / SAMPLES_DIR).glob("step_*.mp4"):
        m = _SAMPLE_NAME.fullmatch(path.name)
        if m:
            found.append(((int(m.group(1)), -int(m.group(2))), path))
    return max(found)[1] if found else None


