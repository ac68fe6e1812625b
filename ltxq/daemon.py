"""The daemon: one loop for every executor. Each pass: recover dead daemons' jobs, settle the
jobs whose run ended (`executor.poll`), claim while the executor has room, start them; then
sleep until the poll interval, a signal, or a spool change (inotify) wakes it.

Every job that reaches done/failed/cancelled through this daemon (recovered past max_attempts,
failed on a dependency, settled after its run) gets the on_finish hooks: the daemon's own
--on-finish, and the job file's on_finish if the file is owned by this daemon's uid.

Signal handlers only set a flag (and wake the sleep through the wakeup fd); the loop acts on
it. A first SIGTERM/SIGINT stops a local job at its next step (the trainer checkpoints; it is
requeued without an attempt) or leaves Slurm jobs to the next Slurm daemon, and exits 0; a
second one exits at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ltxq.errors import ConfigError
from ltxq.executors.base import Executor, Settled, foreign_owner, untrusted_note
from ltxq.executors.local import LocalExecutor, Trainer, one_line
from ltxq.spool import Entry, Spool
from ltxq.wakeup import WATCHED, Waker
from ltxq.workers import Registration

ON_FINISH_TIMEOUT_S = 300.0  # a notification must not hold the queue up for long
SETTLING_NAP_S = 0.2         # --exit-when-idle waits in naps this long for dropped files
CLEAN_TMP_EVERY_S = 600.0    # how often a daemon looks for staged work that dead processes left


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


class Daemon:
    """One worker on one spool, running its jobs through an executor; `run()` returns the exit
    code."""

    def __init__(self, spool: Spool, options: DaemonOptions, executor: Executor | None = None,
                 trainer: Trainer | None = None):
        self.spool = spool
        self.options = options
        self._stopping = False
        self._signal_r: socket.socket | None = None
        self.executor: Executor = executor or LocalExecutor(
            spool, Registration(spool, options.device), lambda: self._stopping,
            device=options.device, trainer_device=options.trainer_device,
            trainer=trainer or options.trainer)
        self.registration: Registration = self.executor.registration  # type: ignore[attr-defined]
        self.worker = self.registration.name
        self._started = 0
        self._looked_again = False
        self._tmp_cleaned: float | None = None

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
        self._signal_r = r
        old_fd = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_fd)
            r.close()
            w.close()
        return restore

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Work until told to stop (or idle with --exit-when-idle / --once); return exit code."""
        restore = self._install_signals()
        waker = Waker(self._signal_r)
        self.registration.start()
        try:
            waker.watch(self.spool.dir(name) for name in WATCHED)
            try:
                return self._loop(waker)
            finally:
                self._settle(self.executor.detach())
        finally:
            waker.close()
            self.registration.stop()
            restore()

    def _loop(self, waker: Waker) -> int:
        while not self._stopping:
            self._clean_tmp()
            self._finished(self.spool.recover())
            self._finished(self.spool.take_ended())  # cancelled by a user, outside a daemon
            self._settle(self.executor.poll())
            if self._start_jobs():
                continue  # settle what a local run ended at once; look at Slurm's new jobs
            busy = self.executor.busy()
            if not busy and self._done():
                return 0
            waker.sleep(self.options.poll if busy else self._nap())
        return 0

    def _clean_tmp(self) -> None:
        """On start and every CLEAN_TMP_EVERY_S: finish or roll back staged work that a killed
        process left in tmp/, and say what was done on stderr (the daemon's log)."""
        now = time.monotonic()
        if self._tmp_cleaned is not None and now - self._tmp_cleaned < CLEAN_TMP_EVERY_S:
            return
        self._tmp_cleaned = now
        for line in self.spool.clean_tmp():
            print(f"ltxq daemon: {line}", file=sys.stderr, flush=True)

    def _start_jobs(self) -> int:
        """Claim and start jobs while the executor has room; return how many started."""
        started = 0
        while (not self._stopping and self.executor.capacity() > 0
               and not (self.options.once and self._started) and not self.spool.paused):
            claimed = self.spool.claim(self.worker, self.options.device)
            self._finished(claimed.finished)  # dependency failures end jobs too: hooks run
            if claimed.claim is None:
                break
            self._looked_again = False
            self._started += 1
            started += 1
            self.executor.start(claimed.claim)
        return started

    def _done(self) -> bool:
        """Return True when an idle --once/--exit-when-idle daemon may exit now."""
        if self.options.once and self._started:
            return True
        if not (self.options.once or self.options.exit_when_idle):
            return False
        # A hand-dropped file not judged yet may become a job: wait until it is adopted or
        # set aside (it settles within the spool's settle time), then look once more.
        undecided = [d for d in self.spool.dropped() if d.reason.startswith("not adopted yet")]
        if any("settling" in d.reason for d in undecided):
            return False
        if undecided and not self._looked_again:
            self._looked_again = True
            return False
        return True

    def _nap(self) -> float:
        """Return how long an idle pass sleeps (short while dropped files settle)."""
        if self.options.once or self.options.exit_when_idle:
            return min(self.options.poll, SETTLING_NAP_S)
        return self.options.poll

    # --- finished jobs ---------------------------------------------------------------------

    def _settle(self, settled: Iterable[Settled]) -> None:
        """Record each reported ending in the spool; hooks for finished jobs; stop if fatal."""
        fatal = None
        for item in settled:
            entry = self.spool.settle(item.claim, item.ending, why=item.why,
                                      **dict(item.changes))
            self._finished([entry])
            fatal = fatal or item.fatal
        if fatal is not None:
            raise fatal

    def _finished(self, entries: Iterable[Entry]) -> None:
        """Run the on_finish hooks of every entry that reached a finished state."""
        for entry in entries:
            if entry.state.finished:
                self._notify(entry)

    def _notify(self, entry: Entry) -> None:
        """Run the on_finish commands of ENTRY; their failure is logged, never the job's."""
        job_id, job = entry.id, entry.job
        commands = [self.options.on_finish] if self.options.on_finish else []
        if job.meta.on_finish:
            uid = foreign_owner(entry.job)
            if uid is None:
                commands.append(job.meta.on_finish)
            else:
                self.spool.log(job_id, untrusted_note("on_finish", uid))
        if not commands:
            return
        meta = job.meta
        env = dict(os.environ,
                   LTXQ_JOB_ID=str(job_id), LTXQ_JOB_STATE=str(entry.state),
                   LTXQ_JOB_NAME=meta.name, LTXQ_OUTPUT_DIR=str(job.output_dir()),
                   LTXQ_CHECKPOINT=meta.checkpoint or "", LTXQ_ERROR=meta.error or "",
                   LTXQ_SPOOL=str(self.spool.path))
        for command in commands:
            self._run_hook(job_id, command, env)

    def _run_hook(self, job_id: int, command: str, env: dict[str, str]) -> None:
        self.spool.log(job_id, f"on_finish: {command}")
        try:
            with open(self.spool.log_path(job_id), "ab") as out:
                rc = subprocess.run(command, shell=True, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    timeout=ON_FINISH_TIMEOUT_S, check=False).returncode
        except (OSError, subprocess.TimeoutExpired) as e:
            self.spool.log(job_id, f"on_finish failed: {one_line(e)}")
            return
        if rc:
            self.spool.log(job_id, f"on_finish failed: exit status {rc}")
