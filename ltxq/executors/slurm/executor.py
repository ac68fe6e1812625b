"""The Slurm executor: each claimed job runs as a Slurm batch job on a compute node.

The daemon claims jobs as usual and this executor keeps each one's lock while its Slurm job
lives; the job stays in running/ with its Slurm id in [job].slurm_job_id. The batch job runs
`ltxq.executors.slurm.node`, which trains in-process on the node (same trainer, same job log)
and prints an `ltxq-result` line last in its output file, logs/<id>.slurm-<slurm id>.out.
`poll` asks squeue; once a Slurm job has ended it reports how, for the daemon to settle:

  completed                          COMPLETED
  the trainer raised / bad job file  FAILED, with the trainer's error
  stopped at a checkpoint (SIGUSR1 before the time limit, SIGTERM on preemption or scancel)
                                     STOPPED (cancelled if a cancel was asked, else requeued)
  trainer missing on the node        NOT_RUN; this executor claims nothing for a while
  no result (node failure, OOM kill, SIGKILL), or Slurm refused the job
                                     DIED (as for a dead daemon: an attempt is counted)

The node never writes the job file: step, checkpoint and sample come from its result line or,
without one, from the job log. Cancel: the node sees control/<id>.cancel between steps, as a
local daemon does; a Slurm job that has not started yet, or has not stopped within the grace
period, gets scancel. `detach` (daemon shutdown) leaves the Slurm jobs running: their locks are
released and the next Slurm daemon adopts them in `poll` (a running job with a Slurm id and a
free lock). Dependencies stay ltxq's: a job is claimed, so submitted, only once its parents are
done.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ltxq.errors import JobNotFound, LtxqError
from ltxq.executors.base import Settled, foreign_owner, untrusted_note
from ltxq.executors.slurm import client
from ltxq.executors.slurm.client import JobState
from ltxq.executors.slurm.node import (
    EXIT_COMPLETED,
    EXIT_FAILED,
    EXIT_NO_TRAINER,
    EXIT_STOPPED,
    EXIT_USAGE,
    batch_script,
    parse_result_line,
)
from ltxq.executors.slurm.report import LogFollower, log_report, read_text, result_changes
from ltxq.spool import Claim, Ending, Spool, State, stem
from ltxq.spool.liveness import this_process
from ltxq.workers import Registration

NO_TRAINER_BACKOFF_S = 60.0  # a node without a working install: do not feed it a job per poll
REFUSED_BACKOFF_S = 5.0      # Slurm refused a job: do not submit the next one at once


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
    follower: LogFollower | None = None  # the node's reports, recorded while it runs


def require_controller() -> None:
    """Raise LtxqError unless a Slurm controller answers."""
    if not client.available():
        raise LtxqError("no Slurm controller answers (sinfo failed): is Slurm installed, "
                        "on PATH, and SLURM_CONF right?")


class SlurmExecutor:
    """Run claimed jobs as Slurm batch jobs and follow them."""

    name = "slurm"

    def __init__(self, spool: Spool, registration: Registration, options: SlurmOptions, *,
                 trainer: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.spool = spool
        self.registration = registration
        self.options = options
        self.worker = registration.name
        self.flights: dict[int, InFlight] = {}
        self._trainer = trainer
        self._clock = clock
        self._ended: list[Settled] = []
        self._claim_after = 0.0
        self._last_warning = ""
        self._published: dict[str, str] | None = None

    def capacity(self) -> int:
        """Return the free places among max_jobs (none while backing off)."""
        if self._clock() < self._claim_after:
            return 0
        return max(0, self.options.max_jobs - len(self.flights))

    def busy(self) -> bool:
        """Return True while a Slurm job of ours lives or an ending waits to be polled."""
        return bool(self.flights or self._ended)

    def poll(self) -> list[Settled]:
        """Adopt orphaned Slurm jobs, relay cancels, and return the jobs whose Slurm job ended."""
        self._adopt_orphans()
        self._watch()
        self._publish()
        ended, self._ended = self._ended, []
        return ended

    # --- submitting ------------------------------------------------------------------------

    def start(self, claim: Claim) -> None:
        """Submit CLAIM held, record its Slurm id, then let Slurm schedule it."""
        spool, job = self.spool, claim.job
        res = job.config.resources
        gpus = res.gpus if res.gpus is not None else self.options.gpus
        if gpus:
            gpus = max(gpus, res.processes)  # one GPU per rank at least
        partition = res.partition or self.options.partition
        time_limit = res.time_limit or self.options.time_limit
        spool.log(claim.id, f"claimed by {self.worker} for Slurm (attempt "
                            f"{job.meta.attempts + 1} of {job.meta.max_attempts}); "
                            f"output {job.output_dir()}")
        script = batch_script(spool.path, claim.id,
                              python=Path(self.options.python or sys.executable),
                              trainer=self._trainer, workdir=spool.path)
        # --hold: the id is recorded before the job can start, so no node ever runs a job whose
        # file does not name it. --no-requeue: recovery is ltxq's, with its attempt count.
        extra = ["--hold", "--no-requeue", *self.options.sbatch_args, *self._job_args(claim)]
        try:
            slurm_id = client.submit_batch(
                script, name=f"ltxq-{claim.id}", partition=partition, gpus=gpus or 0,
                time_limit=time_limit, signal=f"B:USR1@{self.options.warn_before}",
                extra_args=extra, output=spool.dir("logs") / f"{stem(claim.id)}.slurm-%j.out",
                workdir=spool.path)
        except LtxqError as e:
            self._refused(claim, f"Slurm refused the job: {e}")
            return
        spool.update(claim, slurm_job_id=slurm_id)
        try:
            client.release(slurm_id)
        except LtxqError as e:
            client.cancel(slurm_id)
            self._refused(claim, f"Slurm job {slurm_id} could not be released: {e}")
            return
        self.flights[claim.id] = InFlight(claim, slurm_id)
        where = ", ".join(part for part in (
            f"partition {partition}" if partition else "", f"{gpus} GPU(s)" if gpus else "",
            f"{res.processes} ranks" if res.processes > 1 else "",
            f"time limit {time_limit}" if time_limit else "") if part)
        spool.log(claim.id, f"submitted as Slurm job {slurm_id}" + (f" ({where})" if where else ""))
        self._publish()

    def _job_args(self, claim: Claim) -> list[str]:
        """Return the job's own sbatch_args, if its file is this daemon's uid's."""
        args = list(claim.job.config.resources.sbatch_args)
        uid = foreign_owner(claim.job) if args else None
        if uid is not None:
            self.spool.log(claim.id, untrusted_note("sbatch_args", uid))
            return []
        return args

    def _refused(self, claim: Claim, why: str) -> None:
        """A job Slurm would not take: it died before it ran (an attempt is counted)."""
        self._warn(f"job {claim.id}: {why}")
        self._ended.append(Settled(claim, Ending.DIED, why=why))
        self._claim_after = self._clock() + REFUSED_BACKOFF_S

    # --- watching --------------------------------------------------------------------------

    def _watch(self) -> None:
        """Report the jobs whose Slurm job ended; relay cancel requests to the others."""
        if not self.flights:
            return
        try:
            states = client.job_states([f.slurm_id for f in self.flights.values()])
        except LtxqError as e:
            self._warn(f"cannot ask Slurm about its jobs (will retry): {e}")
            return
        for flight in list(self.flights.values()):
            state = states.get(flight.slurm_id)
            if state is None or state.finished:
                del self.flights[flight.claim.id]
                settled = self._ending(flight, state)
                if settled is not None:
                    self._ended.append(settled)
            else:
                self._record_reports(flight)
                if self.spool.cancel_requested(flight.claim.id):
                    self._relay_cancel(flight, state)

    def _record_reports(self, flight: InFlight) -> None:
        """Record the checkpoints and samples the node logged in the job file (the node never
        writes it: this daemon holds its lock), so `status` shows them while it runs."""
        if flight.follower is None:
            flight.follower = LogFollower(self.spool.log_path(flight.claim.id))
        news = flight.follower.news()
        meta = flight.claim.job.meta
        changes = {k: v for k, v in news.items() if getattr(meta, k) != v}
        if changes:
            self.spool.update(flight.claim, **changes)

    def _relay_cancel(self, flight: InFlight, state: JobState) -> None:
        job_id, now = flight.claim.id, self._clock()
        if flight.cancel_seen is None:
            flight.cancel_seen = now
        if flight.scancelled:
            return
        if state is JobState.PENDING or now - flight.cancel_seen >= self.options.cancel_grace:
            why = ("it had not started" if state is JobState.PENDING else
                   f"it did not stop within {self.options.cancel_grace:g} s")
            self.spool.log(job_id, f"cancel: scancel Slurm job {flight.slurm_id} ({why})")
            try:
                client.cancel(flight.slurm_id)
            except LtxqError as e:
                self._warn(f"job {job_id}: {e}")
                return
            flight.scancelled = True

    def _ending(self, flight: InFlight, state: JobState | None) -> Settled | None:
        """The Slurm job ended (or Slurm forgot it): read how, from its result line and log."""
        claim, spool, sid = flight.claim, self.spool, flight.slurm_id
        if not self._still_ours(claim, sid):
            claim.lock.release()  # moved by hand meanwhile: no longer ours to settle
            return None
        text = read_text(spool.dir("logs") / f"{stem(claim.id)}.slurm-{sid}.out")
        doc = parse_result_line(text)
        code = doc.get("exit") if doc else None
        changes = result_changes(doc, log_report(spool.log_path(claim.id)), claim.job.meta)
        total = doc.get("total_steps") if doc else None
        at = f"step {changes.get('step')}/{total}" if total else f"step {changes.get('step')}"
        if code == EXIT_COMPLETED:
            lora = f"; LoRA {doc['lora_path']}" if doc.get("lora_path") else ""
            spool.log(claim.id, f"done at {at} (Slurm job {sid}){lora}")
            return Settled(claim, Ending.COMPLETED, changes=changes)
        if code in (EXIT_FAILED, EXIT_USAGE):
            error = str(doc.get("error") or f"Slurm job {sid} failed")
            spool.log(claim.id, f"failed (Slurm job {sid}): {error}")
            return Settled(claim, Ending.FAILED, why=error, changes=changes)
        if code == EXIT_STOPPED:
            if spool.cancel_requested(claim.id):
                spool.log(claim.id, f"cancelled at {at} (Slurm job {sid})")
            else:
                spool.log(claim.id, f"stopped at {at} on Slurm (job {sid} {state or 'ended'}: "
                                    "time limit, preemption or scancel); requeued to resume")
            return Settled(claim, Ending.STOPPED, changes=changes)
        if code == EXIT_NO_TRAINER:
            self._claim_after = self._clock() + NO_TRAINER_BACKOFF_S
            self._warn(f"job {claim.id}: {doc.get('error')} (on the node of Slurm job {sid})")
            spool.log(claim.id, "the trainer cannot be loaded on the Slurm node; requeued")
            return Settled(claim, Ending.NOT_RUN, changes=changes)
        how = f"Slurm job {sid} ended {state}" if state else f"Slurm job {sid} is gone"
        last = _last_line(text)
        why = how + " without a result" + (f" ({last})" if last else "")
        return Settled(claim, Ending.DIED, why=why, changes=changes)  # settle logs the policy

    def _still_ours(self, claim: Claim, sid: str) -> bool:
        """Return True if CLAIM is still running under Slurm job SID (nobody moved it)."""
        try:
            fresh = self.spool.get(claim.id)
        except (JobNotFound, LtxqError):
            return False
        return fresh.state is State.RUNNING and fresh.job.meta.slurm_job_id == sid

    # --- adopting and leaving --------------------------------------------------------------

    def _adopt_orphans(self) -> None:
        """Take over running jobs whose Slurm job outlived the daemon that submitted it."""
        for job_id in self.spool.ids(State.RUNNING):
            if job_id not in self.flights:
                self._adopt(job_id)

    def _adopt(self, job_id: int) -> None:
        claim = self.spool.take_orphan(job_id)
        if claim is None:
            return  # its owner lives (or it moved on)
        meta = claim.job.meta
        if not meta.slurm_job_id:
            claim.lock.release()  # not a Slurm job: recovery's
            return
        before = meta.worker or "its daemon"
        self.spool.update(claim, worker=self.worker, worker_start=this_process())
        self.flights[job_id] = InFlight(claim, meta.slurm_job_id)
        self.spool.log(job_id, f"{before} is gone; {self.worker} adopts Slurm job "
                               f"{meta.slurm_job_id}")

    def detach(self) -> list[Settled]:
        """Leave the Slurm jobs running and their ltxq jobs to the next Slurm daemon."""
        for flight in self.flights.values():
            self.spool.log(flight.claim.id, f"{self.worker} stopped; Slurm job {flight.slurm_id} "
                                            "runs on and the next Slurm daemon adopts it")
            flight.claim.lock.release()
        if self.flights:
            print(f"ltxq daemon: left {len(self.flights)} Slurm job(s) running: "
                  + ", ".join(f"job {i} = Slurm {f.slurm_id}" for i, f in self.flights.items()),
                  file=sys.stderr)
        self.flights.clear()
        ended, self._ended = self._ended, []
        return ended

    def _publish(self) -> None:
        jobs = {str(i): f.slurm_id for i, f in self.flights.items()}
        if jobs != self._published:
            self._published = jobs
            self.registration.update(jobs=jobs)

    def _warn(self, message: str) -> None:
        """Print a daemon-level problem to stderr (once until it changes)."""
        if message != self._last_warning:
            self._last_warning = message
            print(f"ltxq daemon: {message}", file=sys.stderr, flush=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
