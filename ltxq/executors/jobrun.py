"""The daemon's `Run`: the trainer's window on the spool (job log, cancel and shutdown checks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ltxq.progress import progress_message
from ltxq.spool import Claim, Spool

LOCK_CHECK_S = 2.0  # how often should_stop() looks whether the job's lock file is still ours


class JobRun:
    """A `ltxq.run.Run` for one claimed job: progress goes to logs/<id>.log, at a steady rate."""

    def __init__(self, spool: Spool, claim: Claim, device: str | None,
                 shutdown: Callable[[], bool], *, min_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.job_id: int | None = claim.id
        self.job_key: str | None = getattr(claim.job.meta, "key", None)
        self.output_dir: Path = claim.job.output_dir()
        self.device = device
        self.last_step: int | None = claim.job.meta.step
        self.lock_lost = False
        self._spool = spool
        self._claim = claim
        self._shutdown = shutdown
        self._min_interval = min_interval
        self._clock = clock
        self._last_line: float | None = None
        self._lock_checked: float | None = None

    def should_stop(self) -> bool:
        """Return True on shutdown, once `control/<id>.cancel` exists (one stat per call), or
        once the job's lock file was deleted or replaced (looked at every LOCK_CHECK_S)."""
        return (self._shutdown() or self._spool.cancel_requested(self._claim.id)
                or self._lock_gone())

    def _lock_gone(self) -> bool:
        # `rm -rf spool/locks` frees every lock: another daemon could claim this job again.
        if self.lock_lost or not self._claim.lock.held:
            return self.lock_lost
        t = self._clock()
        if self._lock_checked is not None and t - self._lock_checked < LOCK_CHECK_S:
            return False
        self._lock_checked = t
        if self._claim.lock.replaced():
            self.lock_lost = True
            self.log(f"lock file locks/{self._claim.lock.path.name} was deleted; stopping so "
                     "that the job never runs twice")
        return self.lock_lost

    def progress(self, step: int, total: int, loss: float, lr: float,
                 seconds_per_step: float) -> None:
        """Log a progress line: the first, the last, and at most one per min_interval between."""
        self.last_step = step
        t = self._clock()
        if (self._last_line is not None and step < total
                and t - self._last_line < self._min_interval):
            return
        self._last_line = t
        self._spool.log(self._claim.id, progress_message(step, total, loss, lr,
                                                         seconds_per_step))

    def log(self, message: str) -> None:
        """Append MESSAGE to the job log."""
        self._spool.log(self._claim.id, message)

    def checkpoint_saved(self, path: Path, step: int) -> None:
        """Log the checkpoint and record it in [job] so `status` shows it while running."""
        self.log(checkpoint_line(path, step))
        self._spool.update(self._claim, checkpoint=str(path), step=step)

    def sample_written(self, path: Path, step: int) -> None:
        """Log the validation video and record it in [job]."""
        self.log(sample_line(path, step))
        self._spool.update(self._claim, validation_sample=str(path))


def checkpoint_line(path: Path, step: int) -> str:
    """Return the job-log message for a saved checkpoint (read back by the Slurm executor)."""
    return f"checkpoint step {step}: {path}"


def sample_line(path: Path, step: int) -> str:
    """Return the job-log message for a written validation video."""
    return f"sample step {step}: {path}"
