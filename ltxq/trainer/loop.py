"""The training loop: the upstream LTX-Video-Trainer recipe on cached latents, resumable.

Reading order: `train` (load, prepare, fit, clean up) -> `fit` (set up or resume, then step
until done or stopped) -> `optimizer_step` -> `training_loss` (the rectified-flow objective, in
objective.py with the data it draws from; checkpoints and resuming are in resume.py).
A run is a function of its config and seed: LoRA init, data order, sigmas, noise and the
first-frame coin all come from seeded generators whose states go into every checkpoint, so a
resumed run continues exactly where the checkpoint left off.

The same loop runs as one rank of a data-parallel job when given `distributed.Ranks` of a
process group: each rank keeps its slice of the global batch, gradients are averaged, the
ranks agree on stopping each step, and only rank 0 writes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ltxq.config import TrainingConfig
from ltxq.metrics import MetricsWriter
from ltxq.run import Outcome, Run, TrainResult
from ltxq.trainer import export, library_output, resume, warm
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
    lora_state_dict,
    remove_lora,
)
from ltxq.trainer.memory import PeakMemory, make_optimizer
from ltxq.trainer.models import Components, load_options
from ltxq.trainer.objective import Dataset, Geometry, data_order, training_loss
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
                resume.save(self)
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
    found = resume.load_newest(trainer, ranks)
    if found is None:
        run.log(f"training {config.optimization.steps} steps on {len(trainer.data)} samples, "
                f"{device}, mixed precision {precision}, LoRA rank {config.lora.rank}"
                + (f", {ranks.count} ranks" if ranks.count > 1 else ""))
    if ranks.is_main:
        export.save_config(output_dir, config)
    outcome = trainer.loop()
    saved = resume.save(trainer)
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
        generators=Generators.seeded(opt.seed), order=data_order(data, opt.batch_size
                                                                  * ranks.count, opt.seed),
        ranks=ranks, metrics=MetricsWriter(Path(run.output_dir)) if ranks.is_main else None)


_SAMPLE_NAME = re.compile(r"step_(\d+)_(\d+)\.mp4")


def newest_sample(output_dir: Path) -> Path | None:
    """Return the validation video of the highest step (first prompt first), if any."""
    found = []
    for path in (output_dir / SAMPLES_DIR).glob("step_*.mp4"):
        m = _SAMPLE_NAME.fullmatch(path.name)
        if m:
            found.append(((int(m.group(1)), -int(m.group(2))), path))
    return max(found)[1] if found else None


