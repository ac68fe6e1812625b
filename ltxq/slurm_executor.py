"""`ltxq daemon --executor slurm`: each claimed job runs as a Slurm batch job on a compute node.

The daemon claims jobs as usual and keeps each one's lock while its Slurm job lives; the job
stays in running/ with its Slurm id in [job].slurm_job_id. The batch job runs
`ltxq.slurm_entry`, which trains in-process on the node (same trainer, same job log) and prints
an `ltxq-result` line last in its output file, logs/<id>.slurm-<slurm id>.out. The daemon polls
squeue; once a Slurm job has ended it moves the ltxq job by that result:

  completed                      -> done
  the trainer raised / bad file  -> failed, with the trainer's error
  stopped at a checkpoint (SIGUSR1 before the time limit, SIGTERM on preemption or scancel)
                                 -> cancelled if a cancel was asked, else pending to resume
                                    (no attempt counted: not the job's fault)
  trainer missing on the node    -> pending (no attempt); this daemon claims nothing for a while
  no result (node failure, OOM kill, SIGKILL)
                                 -> as for a dead daemon: pending with attempts + 1, failed after
                                    max_attempts (cancelled if a cancel was asked)

Cancel: the node sees control/<id>.cancel between steps, as a local daemon does; a Slurm job
that has not started yet, or has not stopped within the grace period, gets scancel.
Stopping this daemon leaves its Slurm jobs running: their locks are released and the next Slurm
daemon on the spool adopts them (a running job with a Slurm id and a free lock). Dependencies
stay ltxq's: a job is claimed, so submitted, only once its parents are done.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ltxq import slurm
from ltxq.daemon import Daemon, DaemonOptions
from ltxq.errors import JobNotFound, LtxqError
from ltxq.progress import last_progress
from ltxq.slurm import JobState
from ltxq.slurm_entry import (EXIT_COMPLETED, EXIT_FAILED, EXIT_NO_TRAINER, EXIT_STOPPED,
                              EXIT_USAGE, batch_script, parse_result_line)
from ltxq.spool import Claim, Entry, Spool, State, stem
from ltxq.workers import Registration

NO_TRAINER_BACKOFF_S = 60.0  # a node without a working install: do not feed it a job per poll


@dataclass(frozen=True)
class SlurmOptions:
    """How jobs are submitted; a job's own [resources] keys take precedence."""

    partition: str | None = None
    gpus: int = 0                      # GPUs per job (raised to processes when GPUs are used)
    time_limit: str | None = None      # sbatch --time
    sbatch_args: tuple[str, ...] = ()  # placed before the job's own sbatch_args
    max_jobs: int = 4                  # Slurm jobs this daemon keeps in flight at once
    warn_before: int = 120             # seconds of SIGUSR1 warning before the time limit
    cancel_grace: float = 60.0         # seconds a cancelled job may take to stop by itself
    python: str | None = None          # interpreter on the nodes (default: this one)


@dataclass
class InFlight:
    """One claimed job and its Slurm job."""

    claim: Claim
    slurm_id: str
    cancel_seen: float | None = None   # when this daemon first saw the cancel request
    scancelled: bool = False


class SlurmDaemon(Daemon):
    """A daemon whose jobs run on Slurm; `run()` returns the exit code."""

    def __init__(self, spool: Spool, options: DaemonOptions, slurm_options: SlurmOptions):
        super().__init__(spool, options)
        self.slurm = slurm_options
        self.registration = Registration(spool, None, executor="slurm")
        self.worker = self.registration.name
        self.flights: dict[int, InFlight] = {}
        self._submitted = 0
        self._claim_after = 0.0
        self._last_warning = ""

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """Check that a Slurm controller answers, then work as the local daemon does."""
        if not slurm.available():
            raise LtxqError("no Slurm controller answers (sinfo failed): is Slurm installed, "
                            "on PATH, and SLURM_CONF right?")
        return super().run()

    def _loop(self) -> int:
        try:
            while not self._stopping:
                self.spool.recover()
                self._adopt_orphans()
                self._watch()
                started = self._start_jobs()
                once_done = self.options.once and self._submitted > 0
                idle = not started and (self.options.exit_when_idle or self.options.once)
                if not self.flights and (once_done or idle):
                    return 0
                self._sleep(self.options.poll)
            return 0
        finally:
            self._detach()

    def _start_jobs(self) -> int:
        started = 0
        while (len(self.flights) < self.slurm.max_jobs
               and not (self.options.once and self._submitted)
               and time.monotonic() >= self._claim_after and not self.spool.paused):
            failed: list[Entry] = []
            try:
                claim = self.spool.claim(self.worker, failed=failed)
            finally:
                for entry in failed:  # dependency failures end jobs too: hooks run
                    self._notify(entry.id, entry.job, entry.state)
            if claim is None:
                break
            self._submit(claim)
            self._submitted += 1
            started += 1
        return started

    def _publish(self) -> None:
        self.registration.update(jobs={str(i): f.slurm_id for i, f in self.flights.items()})

    # --- submitting ------------------------------------------------------------------------

    def _submit(self, claim: Claim) -> None:
        """Submit CLAIM held, record its Slurm id, then let Slurm schedule it."""
        spool, job = self.spool, claim.job
        res = job.config.resources
        gpus = res.gpus if res.gpus is not None else self.slurm.gpus
        if gpus:
            gpus = max(gpus, res.processes)  # one GPU per rank at least
        partition = res.partition or self.slurm.partition
        time_limit = res.time_limit or self.slurm.time_limit
        spool.log(claim.id, f"claimed by {self.worker} for Slurm (attempt "
                            f"{job.meta.attempts + 1} of {job.meta.max_attempts}); "
                            f"output {job.output_dir()}")
        script = batch_script(spool.path, claim.id, python=Path(self.slurm.python or sys.executable),
                              trainer=self.options.trainer, workdir=spool.path)
        # --hold: the id is recorded before the job can start, so no node ever runs a job whose
        # file does not name it. --no-requeue: recovery is ltxq's, with its attempt count.
        extra = ["--hold", "--no-requeue", *self.slurm.sbatch_args, *res.sbatch_args]
        try:
            slurm_id = slurm.submit_batch(
                script, name=f"ltxq-{claim.id}", partition=partition, gpus=gpus or 0,
                time_limit=time_limit, signal=f"B:USR1@{self.slurm.warn_before}",
                extra_args=extra, output=spool.dir("logs") / f"{stem(claim.id)}.slurm-%j.out",
                workdir=spool.path)
        except LtxqError as e:
            self._give_back(claim, f"Slurm refused the job: {e}")
            return
        spool.update(claim, slurm_job_id=slurm_id)
        try:
            slurm.release(slurm_id)
        except LtxqError as e:
            slurm.cancel(slurm_id)
            self._give_back(claim, f"Slurm job {slurm_id} could not be released: {e}")
            return
        self.flights[claim.id] = InFlight(claim, slurm_id)
        where = ", ".join(part for part in (
            f"partition {partition}" if partition else "", f"{gpus} GPU(s)" if gpus else "",
            f"{res.processes} ranks" if res.processes > 1 else "",
            f"time limit {time_limit}" if time_limit else "") if part)
        spool.log(claim.id, f"submitted as Slurm job {slurm_id}" + (f" ({where})" if where else ""))
        self._publish()

    def _give_back(self, claim: Claim, why: str) -> None:
        """A job Slurm would not take: requeue it with an attempt counted (failed at the max)."""
        meta = claim.job.meta
        attempts = meta.attempts + 1
        self._warn(f"job {claim.id}: {why}")
        if attempts >= meta.max_attempts:
            self.spool.log(claim.id, f"failed: {why}")
            self.spool.finish(claim, State.FAILED, attempts=attempts, error=why,
                              slurm_job_id=None)
            self._notify(claim.id, claim.job, State.FAILED)
        else:
            self.spool.log(claim.id, f"{why}; requeued (attempt {attempts} of "
                                     f"{meta.max_attempts} used)")
            self.spool.finish(claim, State.PENDING, attempts=attempts, slurm_job_id=None)
            self._claim_after = time.monotonic() + max(self.options.poll, 5.0)

    # --- watching --------------------------------------------------------------------------

    def _watch(self) -> None:
        """Settle the jobs whose Slurm job ended; relay cancel requests to the others."""
        if not self.flights:
            return
        try:
            states = slurm.job_states([f.slurm_id for f in self.flights.values()])
        except LtxqError as e:
            self._warn(f"cannot ask Slurm about its jobs (will retry): {e}")
            return
        for flight in list(self.flights.values()):
            state = states.get(flight.slurm_id)
            if state is None or state.finished:
                self._settle(flight, state)
            elif self.spool.cancel_requested(flight.claim.id):
                self._relay_cancel(flight, state)

    def _relay_cancel(self, flight: InFlight, state: JobState) -> None:
        job_id, now = flight.claim.id, time.monotonic()
        if flight.cancel_seen is None:
            flight.cancel_seen = now
        if flight.scancelled:
            return
        if state is JobState.PENDING or now - flight.cancel_seen >= self.slurm.cancel_grace:
            why = ("it had not started" if state is JobState.PENDING else
                   f"it did not stop within {self.slurm.cancel_grace:g} s")
            self.spool.log(job_id, f"cancel: scancel Slurm job {flight.slurm_id} ({why})")
            try:
                slurm.cancel(flight.slurm_id)
            except LtxqError as e:
                self._warn(f"job {job_id}: {e}")
                return
            flight.scancelled = True

    def _settle(self, flight: InFlight, state: JobState | None) -> None:
        """The Slurm job ended (or Slurm forgot it): move the ltxq job by its result."""
        del self.flights[flight.claim.id]
        self._publish()
        claim, spool, sid = flight.claim, self.spool, flight.slurm_id
        try:
            fresh = spool.get(claim.id)  # the node recorded checkpoint, step and sample in it
        except (JobNotFound, LtxqError):
            fresh = None
        if fresh is None or fresh.state is not State.RUNNING or fresh.job.meta.slurm_job_id != sid:
            claim.lock.release()  # moved by hand meanwhile: no longer ours to finish
            return
        claim.entry = fresh
        output = spool.dir("logs") / f"{stem(claim.id)}.slurm-{sid}.out"
        text = _read_text(output)
        doc = parse_result_line(text)
        code = doc.get("exit") if doc else None
        cancelled = spool.cancel_requested(claim.id)
        meta = fresh.job.meta
        changes = _result_changes(doc, meta.step)
        total = doc.get("total_steps") if doc else None
        at = f"step {changes['step']}/{total}" if total else f"step {changes['step']}"
        if code == EXIT_COMPLETED:
            new = State.DONE
            lora = f"; LoRA {doc['lora_path']}" if doc.get("lora_path") else ""
            spool.log(claim.id, f"done at {at} (Slurm job {sid}){lora}")
        elif code in (EXIT_FAILED, EXIT_USAGE):
            new = State.FAILED
            changes["error"] = str(doc.get("error") or f"Slurm job {sid} failed")
            spool.log(claim.id, f"failed (Slurm job {sid}): {changes['error']}")
        elif code == EXIT_STOPPED and cancelled:
            new = State.CANCELLED
            spool.log(claim.id, f"cancelled at {at} (Slurm job {sid})")
        elif code == EXIT_STOPPED:
            new = State.PENDING
            changes["slurm_job_id"] = None
            spool.log(claim.id, f"stopped at {at} on Slurm (job {sid} {state or 'ended'}: time "
                                "limit, preemption or scancel); requeued to resume")
        elif code == EXIT_NO_TRAINER:
            new = State.PENDING
            changes["slurm_job_id"] = None
            self._claim_after = time.monotonic() + NO_TRAINER_BACKOFF_S
            self._warn(f"job {claim.id}: {doc.get('error')} (on the node of Slurm job {sid})")
            spool.log(claim.id, "the trainer cannot be loaded on the Slurm node; requeued")
        else:
            new = self._died(claim, sid, state, text, cancelled, changes)
        spool.finish(claim, new, **changes)
        if new.finished:
            self._notify(claim.id, claim.job, new)

    def _died(self, claim: Claim, sid: str, state: JobState | None, text: str, cancelled: bool,
              changes: dict[str, object]) -> State:
        """A Slurm job that ended without a result: recover it as a dead daemon's job."""
        meta = claim.job.meta
        how = f"Slurm job {sid} ended {state}" if state else f"Slurm job {sid} is gone"
        last = _last_line(text)
        why = how + " without a result" + (f" ({last})" if last else "")
        progress = last_progress(self.spool.log_path(claim.id))
        if progress:
            changes["step"] = progress.step
        if cancelled:
            self.spool.log(claim.id, f"cancelled: {why}")
            return State.CANCELLED
        attempts = meta.attempts + 1
        changes["attempts"] = attempts
        if attempts >= meta.max_attempts:
            changes["error"] = (f"{why}; interrupted {attempts} times "
                                f"(max_attempts {meta.max_attempts})")
            self.spool.log(claim.id, f"failed: {changes['error']}")
            return State.FAILED
        changes["slurm_job_id"] = None
        self.spool.log(claim.id, f"{why}; requeued to resume (attempt {attempts} of "
                                 f"{meta.max_attempts} used)")
        return State.PENDING

    # --- adopting and leaving --------------------------------------------------------------

    def _adopt_orphans(self) -> None:
        """Take over running jobs whose Slurm job outlived the daemon that submitted it."""
        for entry in self.spool.jobs(State.RUNNING):
            if entry.id in self.flights or not entry.job.meta.slurm_job_id:
                continue
            lock = self.spool.lock(entry.id)
            if not lock.try_acquire():
                continue  # its daemon is alive
            try:
                fresh = self.spool.get(entry.id)
            except (JobNotFound, LtxqError):
                lock.release()
                continue
            sid = fresh.job.meta.slurm_job_id
            if fresh.state is not State.RUNNING or not sid:
                lock.release()
                continue
            claim = Claim(fresh, lock)
            before = fresh.job.meta.worker or "its daemon"
            self.spool.update(claim, worker=self.worker)
            self.flights[entry.id] = InFlight(claim, sid)
            self.spool.log(entry.id, f"{before} is gone; {self.worker} adopts Slurm job {sid}")
        self._publish()

    def _detach(self) -> None:
        """On shutdown: leave the Slurm jobs running and their ltxq jobs to the next daemon."""
        for flight in self.flights.values():
            self.spool.log(flight.claim.id, f"{self.worker} stopped; Slurm job {flight.slurm_id} "
                                            "runs on and the next Slurm daemon adopts it")
            flight.claim.lock.release()
        if self.flights:
            print(f"ltxq daemon: left {len(self.flights)} Slurm job(s) running: "
                  + ", ".join(f"job {i} = Slurm {f.slurm_id}" for i, f in self.flights.items()),
                  file=sys.stderr)
        self.flights.clear()

    def _warn(self, message: str) -> None:
        """Print a daemon-level problem to stderr (once until it changes)."""
        if message != self._last_warning:
            self._last_warning = message
            print(f"ltxq daemon: {message}", file=sys.stderr, flush=True)


def _result_changes(doc: dict[str, object] | None, step: int | None) -> dict[str, object]:
    """The [job] fields a result line carries (paths as the node wrote them)."""
    changes: dict[str, object] = {"step": step}
    if doc:
        if isinstance(doc.get("step"), int):
            changes["step"] = doc["step"]
        for key in ("checkpoint", "validation_sample"):
            if doc.get(key):
                changes[key] = str(doc[key])
    return changes


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""

