"""The daemon: recover, claim, run in-process through `train(config, run)`, finish; repeat.

Signal handlers only set a flag (and wake the poll sleep through the wakeup fd); the loop acts
on it. A first SIGTERM/SIGINT stops the running job at its next step (the trainer checkpoints),
requeues it without counting an attempt, and exits 0; a second one exits at once.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import socket
import subprocess
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ltxq.errors import ConfigError, LtxqError
from ltxq.jobrun import JobRun
from ltxq.job import Job
from ltxq.spool import Claim, Entry, Spool, State
from ltxq.workers import Registration

DEFAULT_TRAINER = "ltxq.trainer:train"
ON_FINISH_TIMEOUT_S = 300.0  # a notification must not hold the queue up for long

Trainer = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class DaemonOptions:
    once: bool = False              # run at most one job, then exit
    exit_when_idle: bool = False    # exit as soon as nothing can be claimed
    poll: float = 2.0               # seconds between looks at an idle spool
    device: str | None = None       # as the user named it ("cuda:1"): shown by status/workers
    trainer_device: str | None = None  # what the trainer gets ("cuda:0" once pinned)
    trainer: str | None = None      # "module:function"; default $LTXQ_TRAINER or the real one
    on_finish: str | None = None    # shell command run after each finished job


def pin_device(device: str | None) -> str | None:
    """Make cuda:N the only GPU this process sees (CUDA_VISIBLE_DEVICES); return the name the
    trainer must use ("cuda:0"). Call before anything imports torch."""
    if device is None or not device.startswith("cuda"):
        return device
    _, _, index = device.partition(":")
    if device == "cuda":
        return device
    if not index.isdigit():
        raise ConfigError(f"expected cuda:N (N a GPU index), got {device!r}", key="--device")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        # cuda:N counts among the GPUs this process was given, as torch would.
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if int(index) >= len(ids):
            raise ConfigError(f"{device} but CUDA_VISIBLE_DEVICES={visible} gives "
                              f"{len(ids)} GPU(s)", key="--device")
        physical = ids[int(index)]
    else:
        physical = index
    os.environ["CUDA_VISIBLE_DEVICES"] = physical
    return "cuda:0"


def resolve_trainer(spec: str | None = None) -> Trainer:
    """Import the trainer function named "module:function" (default: the real trainer)."""
    spec = spec or os.environ.get("LTXQ_TRAINER") or DEFAULT_TRAINER
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"expected module:function, got {spec!r}", key="--trainer")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise LtxqError(f"cannot load the trainer {spec}: {e}") from e


class Daemon:
    """One worker on one spool; `run()` returns the process exit code."""

    def __init__(self, spool: Spool, options: DaemonOptions, trainer: Trainer | None = None):
        self.spool = spool
        self.options = options
        self._trainer = trainer
        self._stopping = False
        self._wake_r: socket.socket | None = None
        self.registration = Registration(spool, options.device)
        self.worker = self.registration.name

    # --- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stopping:
            os._exit(128 + signum)  # second signal: the user wants out now
        self._stopping = True

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wake_r = r
        old_fd = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_fd)
            r.close()
            w.close()
        return restore

    def _sleep(self, seconds: float) -> None:
        """Sleep up to SECONDS, waking at once on a signal."""
        if self._wake_r is None:
            threading.Event().wait(seconds)
            return
        ready, _, _ = select.select([self._wake_r], [], [], seconds)
        if ready:
            try:
                self._wake_r.recv(64)
            except BlockingIOError:
                pass

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Work until told to stop (or idle with --exit-when-idle / --once); return exit code."""
        restore = self._install_signals()
        self.registration.start()
        try:
            return self._loop()
        finally:
            self.registration.stop()
            restore()

    def _loop(self) -> int:
        while not self._stopping:
            self.spool.recover()
            claim = None
            if not self.spool.paused:
                failed: list[Entry] = []
                try:
                    claim = self.spool.claim(self.worker, self.options.device, failed)
                finally:
                    for entry in failed:  # dependency failures end jobs too: hooks run
                        self._notify(entry.id, entry.job, entry.state)
            if claim is not None:
                self._run_job(claim)
                if self.options.once:
                    return 0
                continue
            if self.options.once or self.options.exit_when_idle:
                return 0
            self._sleep(self.options.poll)
        return 0

    def _trainer_fn(self) -> Trainer:
        if self._trainer is None:
            trainer = resolve_trainer(self.options.trainer)  # torch loads here, not before
            self._check_device()
            self._trainer = trainer
        return self._trainer

    def _check_device(self) -> None:
        """Refuse a --device this machine lacks before it fails the job (and every next one)."""
        spec = self.options.trainer or os.environ.get("LTXQ_TRAINER") or DEFAULT_TRAINER
        if self.options.trainer_device in (None, "cpu") or spec != DEFAULT_TRAINER:
            return  # a test double runs on any device
        from ltxq.trainer.device import resolve_device

        try:
            resolve_device(self.options.trainer_device)
        except LtxqError as e:
            # The message names the pinned device ("cuda:0"); the user asked for theirs.
            reason = str(e).split(": ", 1)[-1]
            raise LtxqError(f"--device {self.options.device}: {reason}") from None

    def _run_job(self, claim: Claim) -> None:
        """Run one claimed job to an outcome (LtxqError if the trainer cannot be loaded)."""
        spool, job = self.spool, claim.job
        self.registration.update(job=claim.id)
        device = self.options.device or "auto"
        spool.log(claim.id, f"started on {self.worker} (device {device}, attempt "
                            f"{job.meta.attempts + 1} of {job.meta.max_attempts}); "
                            f"output {job.output_dir()}")
        try:
            trainer = self._trainer_fn()
        except LtxqError as e:
            # A broken install must not fail the queue's jobs: give this one back and stop.
            spool.log(claim.id, f"{e}; requeued")
            spool.finish(claim, State.PENDING)
            self.registration.update(job=None)
            raise
        run = JobRun(spool, claim, self.options.trainer_device, lambda: self._stopping)
        try:
            result = trainer(job.config, run)
        except Exception as e:  # the job's outcome, not the daemon's
            state = State.FAILED
            error = _one_line(e)
            spool.log(claim.id, "failed: " + error)
            for line in traceback.format_exc().rstrip().splitlines():
                spool.log(claim.id, "  " + line)
            spool.finish(claim, state, error=error, step=run.last_step)
        else:
            state = self._record(claim, result)
        self.registration.update(job=None)
        if state.finished:
            self._notify(claim.id, claim.job, state)

    def _record(self, claim: Claim, result: Any) -> State:
        """Turn a TrainResult into the job's transition; return the new state."""
        from ltxq.run import Outcome

        spool = self.spool
        meta = claim.job.meta
        changes = {"step": result.step,
                   "checkpoint": str(result.checkpoint) if result.checkpoint else meta.checkpoint,
                   "validation_sample": (str(result.validation_sample)
                                         if result.validation_sample else meta.validation_sample)}
        if result.outcome == Outcome.COMPLETED:
            state = State.DONE
            lora = f"; LoRA {result.lora_path}" if result.lora_path else ""
            spool.log(claim.id, f"done at step {result.step}/{result.total_steps}{lora}")
        elif spool.cancel_requested(claim.id):
            state = State.CANCELLED
            spool.log(claim.id, f"cancelled at step {result.step}/{result.total_steps}")
        else:
            state = State.PENDING  # shutdown: requeued without counting an attempt
            spool.log(claim.id, f"stopped at step {result.step}/{result.total_steps} "
                                "(daemon shutting down); requeued")
        spool.finish(claim, state, **changes)
        return state

    def _notify(self, job_id: int, job: Job, state: State) -> None:
        """Run the on_finish commands of JOB, which ended in STATE; their failure is logged,
        never the job's."""
        commands = [c for c in (self.options.on_finish, job.meta.on_finish) if c]
        if not commands:
            return
        meta = job.meta
        env = dict(os.environ,
                   LTXQ_JOB_ID=str(job_id), LTXQ_JOB_STATE=str(state),
                   LTXQ_JOB_NAME=meta.name, LTXQ_OUTPUT_DIR=str(job.output_dir()),
                   LTXQ_CHECKPOINT=meta.checkpoint or "", LTXQ_ERROR=meta.error or "",
                   LTXQ_SPOOL=str(self.spool.path))
        for command in commands:
            self.spool.log(job_id, f"on_finish: {command}")
            try:
                with open(self.spool.log_path(job_id), "ab") as out:
                    rc = subprocess.run(command, shell=True, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        timeout=ON_FINISH_TIMEOUT_S).returncode
            except (OSError, subprocess.TimeoutExpired) as e:
                self.spool.log(job_id, f"on_finish failed: {_one_line(e)}")
                continue
            if rc:
                self.spool.log(job_id, f"on_finish failed: exit status {rc}")


def _one_line(e: BaseException) -> str:
    """The error line a user sees: ltxq's own messages as is, others with their type."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, LtxqError):
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
