"""The local executor: one job at a time, trained in this process through `train(config, run)`.

`start` returns when the trainer does (the job's run is over), so `poll` only hands back what
`start` saw. A first SIGTERM/SIGINT makes the daemon's stop flag true: should_stop() tells the
trainer, which saves a checkpoint and returns STOPPED.
"""

from __future__ import annotations

import importlib
import os
import traceback
from collections.abc import Callable
from typing import Any

from ltxq.errors import ConfigError, LtxqError
from ltxq.executors.base import Settled
from ltxq.executors.jobrun import JobRun
from ltxq.executors.kinds import check_after_captions, release_others, run_function
from ltxq.spool import Claim, Ending, Spool
from ltxq.workers import Registration

DEFAULT_TRAINER = "ltxq.trainer:train"

Trainer = Callable[[Any, Any], Any]


def trainer_spec(spec: str | None = None) -> str:
    """Return the "module:function" to train with: SPEC, $LTXQ_TRAINER, or the real trainer."""
    return spec or os.environ.get("LTXQ_TRAINER") or DEFAULT_TRAINER


def resolve_trainer(spec: str | None = None) -> Trainer:
    """Import the trainer function named "module:function" (default: the real trainer)."""
    spec = trainer_spec(spec)
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"expected module:function, got {spec!r}", key="--trainer")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise LtxqError(f"cannot load the trainer {spec}: {e}") from e


def one_line(e: BaseException) -> str:
    """The error line a user sees: ltxq's own messages as is, others with their type."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, LtxqError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class LocalExecutor:
    """Train claimed jobs one at a time in this process."""

    name = "local"

    def __init__(self, spool: Spool, registration: Registration, stopping: Callable[[], bool], *,
                 device: str | None = None, trainer_device: str | None = None,
                 trainer: Trainer | str | None = None):
        self.spool = spool
        self.registration = registration
        self._stopping = stopping
        self._device = device                  # as the user named it: for the log line
        self._trainer_device = trainer_device  # what the trainer gets ("cuda:0" once pinned)
        self._trainer = trainer if callable(trainer) else None
        self._spec = None if callable(trainer) else trainer
        self._ended: list[Settled] = []

    def capacity(self) -> int:
        """Return 1 when no job runs and none waits to be settled."""
        return 0 if self._ended else 1

    def busy(self) -> bool:
        """Return True while a job's ending waits to be polled."""
        return bool(self._ended)

    def poll(self) -> list[Settled]:
        """Return what the last `start` saw."""
        ended, self._ended = self._ended, []
        return ended

    def detach(self) -> list[Settled]:
        """Nothing runs between calls: return the ending not polled yet."""
        return self.poll()

    def start(self, claim: Claim) -> None:
        """Train CLAIM to its end (the daemon's stop flag stops it at a checkpoint)."""
        self.registration.update(job=claim.id)
        try:
            self._ended.append(self._run(claim))
        finally:
            self.registration.update(job=None)

    def _run(self, claim: Claim) -> Settled:
        spool, job = self.spool, claim.job
        spool.log(claim.id, f"started on {self.registration.name} (device "
                            f"{self._device or 'auto'}, attempt {job.meta.attempts + 1} of "
                            f"{job.meta.max_attempts}); output {job.output_dir()}")
        try:
            train = run_function(job.kind, self._trainer_fn)  # by kind: executors/kinds.py
        except LtxqError as e:
            # A broken install must not fail the queue's jobs: give this one back and stop.
            spool.log(claim.id, f"{e}; requeued")
            return Settled(claim, Ending.NOT_RUN, fatal=e)
        release_others(job.kind, lambda message: spool.log(claim.id, message))
        run = JobRun(spool, claim, self._trainer_device, self._stopping)
        try:
            check_after_captions(spool, job)
            result = train(job.work, run)
        except Exception as e:  # noqa: BLE001 - the job's outcome, not the daemon's
            error = one_line(e)
            spool.log(claim.id, "failed: " + error)
            for line in traceback.format_exc().rstrip().splitlines():
                spool.log(claim.id, "  " + line)
            return Settled(claim, Ending.FAILED, why=error, changes={"step": run.last_step})
        return self._ending(claim, result, run)

    def _ending(self, claim: Claim, result: Any, run: JobRun) -> Settled:
        """Turn a TrainResult into an Ending, logging what happened."""
        from ltxq.run import Outcome

        meta, log = claim.job.meta, self.spool.log
        changes = {"step": result.step,
                   "checkpoint": str(result.checkpoint) if result.checkpoint else meta.checkpoint,
                   "validation_sample": (str(result.validation_sample)
                                         if result.validation_sample else meta.validation_sample)}
        peak = getattr(result, "peak_memory_gib", None)  # a trainer seam may not measure it
        if peak is not None:
            changes["peak_memory_gib"] = float(peak)
        at = f"step {result.step}/{result.total_steps}"
        if result.outcome == Outcome.COMPLETED:
            lora = f"; LoRA {result.lora_path}" if result.lora_path else ""
            log(claim.id, f"done at {at}{lora}")
            return Settled(claim, Ending.COMPLETED, changes=changes)
        if self.spool.cancel_requested(claim.id):
            log(claim.id, f"cancelled at {at}")
        elif run.lock_lost:
            log(claim.id, f"stopped at {at} (lock file deleted); requeued")
        else:
            log(claim.id, f"stopped at {at} (daemon shutting down); requeued")
        return Settled(claim, Ending.STOPPED, changes=changes)

    def _trainer_fn(self) -> Trainer:
        if self._trainer is None:
            trainer = resolve_trainer(self._spec)  # torch loads here, not before
            self._check_device()
            self._trainer = trainer
        return self._trainer

    def _check_device(self) -> None:
        """Refuse a --device this machine lacks before it fails the job (and every next one)."""
        if self._trainer_device in (None, "cpu") or trainer_spec(self._spec) != DEFAULT_TRAINER:
            return  # a test double runs on any device
        from ltxq.trainer.device import resolve_device

        try:
            resolve_device(self._trainer_device)
        except LtxqError as e:
            # The message names the pinned device ("cuda:0"); the user asked for theirs.
            reason = str(e).split(": ", 1)[-1]
            raise LtxqError(f"--device {self._device}: {reason}") from None
