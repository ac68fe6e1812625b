"""What users do to jobs in the spool: cancel, resume, reorder, edit, clear, pause. Each is a
row of `table.TABLE` (refused with the operation's own message otherwise), done under the job's
lock with the one locked move of transitions.py."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ltxq import fsutil
from ltxq import job as jobfile
from ltxq.errors import ConfigError, LtxqError, WrongState
from ltxq.job import Job, parse_job
from ltxq.spool.intake import fresh_job
from ltxq.spool.layout import State, job_id_of, states, stem
from ltxq.spool.store import Entry
from ltxq.spool.table import Op, rule
from ltxq.spool.transitions import Transitions

ENDED = ".ended"            # control/<id>.ended: finished outside a daemon, hooks not run yet
ENDED_PREFIX = "ended-"    # tmp/ended-*: a note a daemon is taking


class Actions(Transitions):
    """The users' side of the table."""

    def cancel(self, job_id: int) -> State:
        """Cancel a pending job at once, or ask a running one to stop; return its state now.

        A running job is moved to cancelled/ by its owner at the next step (RUNNING is
        returned); one whose owner died is cancelled at once, unless a Slurm job may still run
        it: a Slurm daemon then relays the request (scancel) and settles it.
        """
        deadline = time.monotonic() + 10.0
        while True:
            entry = self.get(job_id)
            rule(Op.CANCEL, entry.state, job_id)
            if entry.state is State.PENDING:
                if self._move_locked(job_id, State.PENDING, State.CANCELLED,
                                     finished_at=self.clock()) is not None:
                    self.log(job_id, "cancelled while pending")
                    self._ended_elsewhere(job_id)
                    return State.CANCELLED
            elif self._cancel_orphan(job_id):
                return State.CANCELLED
            else:
                self.write_text(self.cancel_path(job_id), f"{self.clock().isoformat()}\n")
                if self.state_of(job_id) is not State.RUNNING:
                    self.cancel_path(job_id).unlink(missing_ok=True)
                    continue  # it finished or was requeued meanwhile: look again
                return State.RUNNING
            if time.monotonic() > deadline:
                raise WrongState(f"job {job_id} is locked by another process; try again")
            time.sleep(0.05)  # a daemon holds the lock for the instant of a claim

    def _cancel_orphan(self, job_id: int) -> bool:
        """Cancel running JOB_ID at once if its owner is dead and no Slurm job can run it."""
        claim = self.take_orphan(job_id)
        if claim is None:
            return False
        if claim.job.meta.slurm_job_id:
            claim.lock.release()  # the same rule as recovery: Slurm jobs are a Slurm daemon's
            return False
        self.finish(claim, State.CANCELLED, worker=None, worker_start=None)
        self.log(job_id, "cancelled (its daemon was gone)")
        self._ended_elsewhere(job_id)
        return True

    def _ended_elsewhere(self, job_id: int) -> None:
        """Leave a note (control/<id>.ended) that JOB_ID finished outside any daemon, so that
        the next daemon runs its on_finish hooks (`take_ended`)."""
        self.write_text(self.dir("control") / f"{stem(job_id)}{ENDED}", "")

    def take_ended(self) -> list[Entry]:
        """Take the notes of jobs that finished outside a daemon (a user's cancel); return
        those still finished. Each note is taken by one daemon only (the rename decides)."""
        taken = []
        control = self.dir("control")
        for name in self.listing("control"):
            job_id = job_id_of(name.removesuffix(ENDED) + ".toml")
            if not name.endswith(ENDED) or job_id is None:
                continue
            staged = self.tmp_dir() / f"{ENDED_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
            try:
                os.rename(control / name, staged)
            except FileNotFoundError:
                continue  # another daemon took it
            try:
                entry = self.get(job_id)
            except LtxqError:
                entry = None
            staged.unlink(missing_ok=True)
            if entry is not None and entry.state.finished:
                taken.append(entry)
        return taken

    def resume(self, job_id: int, fresh: bool = False) -> int:
        """Queue a failed or cancelled job again under its id (it continues from its latest
        checkpoint); with FRESH, queue a new job with the same config; return the id queued."""
        entry = self.get(job_id)
        if fresh:
            return self.publish(fresh_job(entry.job).with_meta(after=[]))
        rule(Op.RESUME, entry.state, job_id)
        if self._move_locked(job_id, entry.state, State.PENDING, attempts=0, error=None,
                             finished_at=None, worker=None, worker_start=None,
                             wait=5.0) is None:
            raise WrongState(f"job {job_id} changed meanwhile; try again")
        self.log(job_id, "resumed; continues from its latest checkpoint")
        return job_id

    def set_priority(self, job_id: int, priority: int) -> None:
        """Change the priority of a pending job."""
        if not -1_000_000 <= priority <= 1_000_000:
            raise ConfigError(f"must be between -1000000 and 1000000, got {priority}",
                              key="job.priority")
        rule(Op.PRIORITY, self.get(job_id).state, job_id)
        if self._move_locked(job_id, State.PENDING, State.PENDING, wait=5.0,
                             priority=priority) is None:
            raise WrongState(f"job {job_id} was claimed meanwhile; priority not changed")

    def replace_pending(self, job_id: int, expected: bytes, text: str) -> Job:
        """Replace pending job JOB_ID by TEXT if its file still holds EXPECTED; return the job.

        Refused (WrongState) when the job was claimed, cancelled or changed meanwhile.
        """
        path = self.job_path(State.PENDING, job_id)
        job = parse_job(text, file=path, base_dir=self.path.parent, require_dataset_exists=True)
        if job.meta.id != job_id:
            raise ConfigError(f"must stay {job_id}", key="job.id", file=path)
        jobfile.check_name(job, path)
        self.check_parents(job, path)
        lock = self.lock(job_id)
        if not lock.try_acquire():
            raise WrongState(f"job {job_id} is being claimed or changed right now; edit refused")
        try:
            try:
                current = path.read_bytes()
            except FileNotFoundError:
                state = self.state_of(job_id)
                raise WrongState(f"job {job_id} is {state or 'gone'} now, no longer pending; "
                                 "edit refused") from None
            if current != expected:
                raise WrongState(f"job {job_id} was changed by someone else; edit refused")
            # The job's key and output folder are ltxq's bookkeeping: an edit keeps them.
            kept = self.parse_file(current, path, State.PENDING).meta
            job = job.with_meta(key=kept.key, output_dir=kept.output_dir,
                                author_uid=os.geteuid())  # whoever edits writes its content
            self.write_job(path, job)
        finally:
            lock.release()
        return job

    def clear(self, which: Iterable[State | str] = (State.DONE,), *,
              older_than: timedelta | None = None) -> list[int]:
        """Remove finished jobs' spool files and logs (never their outputs); return their ids."""
        which = states(which)
        for st in which:
            if not st.finished:
                raise WrongState(f"clear only removes finished jobs, not {st} ones")
        cutoff = self.clock() - older_than if older_than is not None else None
        cleared = []
        for entry in self.jobs(which):
            if cutoff is not None and (entry.job.meta.finished_at or _mtime(entry.path)) > cutoff:
                continue
            if self._remove_locked(entry):
                cleared.append(entry.id)
        if cleared:
            for st in which:
                fsutil.fsync_dir(self.dir(st))
        return cleared

    def _remove_locked(self, entry: Entry) -> bool:
        lock = self.lock(entry.id)
        if not lock.try_acquire():
            return False
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return False  # resumed or cleared meanwhile
        finally:
            lock.release()
        self.log_path(entry.id).unlink(missing_ok=True)
        for output in self.dir("logs").glob(f"{stem(entry.id)}.slurm-*.out"):
            output.unlink(missing_ok=True)
        self.cancel_path(entry.id).unlink(missing_ok=True)
        return True

    def pause(self) -> None:
        """Stop every daemon on this spool from claiming new jobs (running ones go on)."""
        self.write_text(self.dir("control") / "pause", f"{self.clock().isoformat()}\n")

    def unpause(self) -> None:
        """Let daemons claim jobs again."""
        (self.dir("control") / "pause").unlink(missing_ok=True)


def _mtime(path: Path) -> datetime:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return datetime.fromtimestamp(0, UTC)
