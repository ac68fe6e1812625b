"""Moving jobs between states: each public method is one row of `table.TABLE`, done under the
job's lock with one rename (`_move_locked`, or a claim's held lock), and each returns what it
finished so the daemon can run on_finish for every job that ends."""

from __future__ import annotations

import dataclasses
import heapq
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ltxq import fsutil
from ltxq.errors import ConfigError
from ltxq.fsutil import Lock
from ltxq.job import Job
from ltxq.progress import last_progress
from ltxq.spool.claimindex import ClaimIndex, Facts
from ltxq.spool.deps import find_cycle, parents_block
from ltxq.spool.intake import Intake
from ltxq.spool.layout import State, job_id_of, stem
from ltxq.spool.liveness import owner_alive, this_process
from ltxq.spool.store import Entry
from ltxq.spool.table import Ending, Op, ending_move, interruption, rule


def run_order(priority: int, job_id: int) -> tuple[int, int]:
    """The sort key of the queue: higher priority first, then lower id (DESIGN.md §1)."""
    return -priority, job_id


# A fruitless claim pass is repeated only when a folder changed, or after this long at most (a
# file edited in place changes no folder).
FULL_PASS_S = 30.0


@dataclass
class Claim:
    """A running job and the lock that proves its owner is alive; released when it settles."""

    entry: Entry
    lock: Lock

    @property
    def id(self) -> int:
        return self.entry.id

    @property
    def job(self) -> Job:
        return self.entry.job


@dataclass
class Claimed:
    """What a claim pass did: the job it claimed (or None) and the jobs it failed on the way
    (dependency failures, cycles), which have finished."""

    claim: Claim | None
    finished: list[Entry] = field(default_factory=list)


class Transitions(Intake):
    """Every move of a job that is already in the spool."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._claim_index: ClaimIndex | None = None
        self._idle: tuple[tuple[int, ...], float] | None = None  # a fruitless pass: when, over what

    # --- the daemon's side -----------------------------------------------------------------

    def claim(self, worker: str, device: str | None = None) -> Claimed:
        """Claim the first runnable pending job (priority, then id) for WORKER.

        Jobs waiting for [job].after parents are skipped; those whose parent failed, was
        cancelled or is gone, and those caught in a dependency cycle, are moved to failed/ on
        the way. A pass over a spool that has not changed since a fruitless pass reads nothing.
        """
        signature = self._signature()
        if (signature is not None and self._idle is not None and self._idle[0] == signature
                and time.monotonic() - self._idle[1] < FULL_PASS_S):
            return Claimed(None)
        self._idle = None
        names, facts = self._pending_facts(self.before_scan())
        order = sorted(facts, key=lambda n: run_order(facts[n].priority, names[n]))
        graph = {names[n]: list(facts[n].after) for n in order}
        known: dict[int, State | None] = {}

        def state_of(job_id: int) -> State | None:
            if job_id not in known:
                known[job_id] = self.state_of(job_id)
            return known[job_id]

        result, busy = Claimed(None), False
        for name in order:
            job_id = names[name]
            if graph[job_id]:
                cycle = find_cycle(job_id, graph.get)
                waiting, why = parents_block(graph[job_id], state_of)
                if cycle:
                    why = "dependency cycle: " + " -> ".join(map(str, cycle))
                if why is not None:
                    self._fail_pending(job_id, why, result.finished)
                    continue
                if waiting:
                    continue
            claim = self._claim_one(job_id, worker, device)
            if claim is not None:
                result.claim = claim
                return result
            busy = True  # locked by someone, or judged bad: look again next time
        if not busy and not result.finished and signature is not None:
            self._idle = (signature, time.monotonic())
        return result

    def next_pending(self, count: int) -> list[int]:
        """Return the ids of the COUNT pending jobs that run first (priority, then id; `after`
        not considered), from the claim index: a stat per pending file, no parse."""
        names, facts = self._pending_facts(self.copies())
        first = heapq.nsmallest(count, facts, key=lambda n: run_order(facts[n].priority, names[n]))
        return [names[n] for n in first]

    def _pending_facts(self, copies: set[str]) -> tuple[dict[str, int], dict[str, Facts]]:
        """Return the pending job files (name -> id, copies left out) and their claim facts."""
        names = {n: i for n, i in self.numbered(State.PENDING).items() if n not in copies}
        self._claim_index = self._claim_index or ClaimIndex(self)
        return names, self._claim_index.facts(names)

    def _signature(self) -> tuple[int, ...] | None:
        """Return the mtimes of the folders a claim depends on, or None if one changed in the
        last 2 s (a change within the clock's granularity could go unseen)."""
        out = []
        limit = time.time_ns() - 2_000_000_000
        for name in (*State, "control"):
            try:
                mtime = os.stat(self.path / name).st_mtime_ns
            except FileNotFoundError:
                return None
            if mtime > limit:
                return None
            out.append(mtime)
        return tuple(out)

    def _fail_pending(self, job_id: int, why: str, finished: list[Entry]) -> None:
        """Move pending JOB_ID to failed/ with error WHY (unless it moved on meanwhile)."""
        rule(Op.DEPENDENCY, State.PENDING, job_id)
        moved = self._move_locked(job_id, State.PENDING, State.FAILED, error=why,
                                  finished_at=self.clock())
        if moved is not None:
            self.log(job_id, why)
            finished.append(moved)

    def _claim_one(self, job_id: int, worker: str, device: str | None) -> Claim | None:
        lock = self.lock(job_id)
        if not lock.try_acquire():
            return None  # another daemon is claiming it, or a user is changing it
        try:
            src = self.job_path(State.PENDING, job_id)
            dest = self.job_path(State.RUNNING, job_id)
            try:
                job = self.read_for_rewrite(src, State.PENDING)
            except FileNotFoundError:
                lock.release()
                return None
            except ConfigError as e:
                lock.release()
                self.bad_job_file(src, State.PENDING, job_id, e)  # adopted or set aside
                return None
            # A stale request from an earlier run must not stop this one; cancels from now on
            # see the job in running/ and are honoured.
            self.cancel_path(job_id).unlink(missing_ok=True)
            fsutil.move(src, dest)
            job = job.with_meta(started_at=self.clock(), worker=worker, device=device,
                                worker_start=this_process(), error=None, finished_at=None,
                                slurm_job_id=None)
            self.write_job(dest, job)
            return Claim(Entry(State.RUNNING, dest, job), lock)
        except FileNotFoundError:
            lock.release()
            return None
        except BaseException:
            lock.release()
            raise

    def update(self, claim: Claim, **changes: Any) -> None:
        """Rewrite the claimed running job's [job] fields (only its lock holder may)."""
        job = claim.job.with_meta(**changes)
        self.write_job(claim.entry.path, job)
        claim.entry = dataclasses.replace(claim.entry, job=job)

    def finish(self, claim: Claim, state: State, **changes: Any) -> Entry:
        """Record CHANGES, move the claimed job to STATE, release its lock; return it there."""
        try:
            if state is State.PENDING:
                changes.setdefault("worker", None)
                changes.setdefault("worker_start", None)
            elif state.finished:
                changes.setdefault("finished_at", self.clock())
            self.update(claim, **changes)
            dest = self.job_path(state, claim.id)
            fsutil.move(claim.entry.path, dest)
            claim.entry = dataclasses.replace(claim.entry, state=state, path=dest)
            self.cancel_path(claim.id).unlink(missing_ok=True)
            return claim.entry
        finally:
            claim.lock.release()

    def settle(self, claim: Claim, ending: Ending, *, why: str = "",
               **changes: Any) -> Entry:
        """Move a claimed job by how its run ended (table.ending_move decides where); log the
        policy's line for a DIED run; return the job in its new state."""
        rule(Op.SETTLE, claim.entry.state, claim.id)
        move = ending_move(ending, claim.job.meta, cancel_requested=self.cancel_requested(
            claim.id), why=why, now=self.clock())
        if ending is Ending.DIED:
            progress = last_progress(self.log_path(claim.id))
            if progress is not None:
                changes.setdefault("step", progress.step)
            self.log(claim.id, move.message)
        return self.finish(claim, move.state, **{**changes, **move.changes})

    def cancel_requested(self, job_id: int) -> bool:
        """Return True if someone asked to stop running job JOB_ID (one stat)."""
        return os.path.exists(self.path / "control" / f"{stem(job_id)}.cancel")

    def take_orphan(self, job_id: int) -> Claim | None:
        """Take running job JOB_ID if its owner is dead (lock free and, on this host, its
        process gone); None if it is alive or moved on. The caller then owns the claim."""
        lock = self.lock(job_id)
        if not lock.try_acquire():
            return None  # alive
        try:
            path = self.job_path(State.RUNNING, job_id)
            try:
                job = self.read_for_rewrite(path, State.RUNNING)
            except (FileNotFoundError, ConfigError) as e:
                lock.release()
                if isinstance(e, ConfigError):
                    self.bad_job_file(path, State.RUNNING, job_id, e)
                return None
            if owner_alive(job.meta.worker, job.meta.worker_start):
                lock.release()  # its lock file was deleted, but its owner runs: hands off
                return None
            return Claim(Entry(State.RUNNING, path, job), lock)
        except BaseException:
            lock.release()
            raise

    def adopt_running(self, job_id: int, worker: str) -> Claim | None:
        """Become the owner of running job JOB_ID whose owner died (a Slurm job outliving its
        daemon); None if its owner lives or it moved on."""
        claim = self.take_orphan(job_id)
        if claim is not None:
            self.update(claim, worker=worker, worker_start=this_process())
        return claim

    def recover(self) -> list[Entry]:
        """Requeue running jobs whose owner died (attempts + 1), or fail them after
        max_attempts; return each job moved, in its new state. Jobs with a Slurm id are left to
        a Slurm daemon, which knows whether their Slurm job still runs."""
        moved = []
        for name in sorted(os.listdir(self.dir(State.RUNNING))):
            job_id = job_id_of(name)
            if job_id is None:
                continue
            claim = self.take_orphan(job_id)
            if claim is None:
                continue
            meta = claim.job.meta
            if meta.slurm_job_id:
                claim.lock.release()  # its Slurm job may live on: a Slurm daemon settles it
                continue
            progress = last_progress(self.log_path(job_id))
            step = progress.step if progress else meta.step
            move = interruption(meta, f"{meta.worker or 'its daemon'} is gone", self.clock())
            self.log(job_id, move.message if move.state.finished else "recovered: " + move.message)
            moved.append(self.finish(claim, move.state, step=step, **move.changes))
        return moved

    def _move_locked(self, job_id: int, src: State, dest: State, *, wait: float = 0.0,
                     **changes: Any) -> Entry | None:
        """Under the job's lock, rewrite the job with CHANGES and move it SRC -> DEST (THE one
        locked move); return it there, or None if the lock stayed busy for WAIT seconds or the
        file is no longer in SRC."""
        lock = self.lock(job_id)
        deadline = time.monotonic() + wait
        while not lock.try_acquire():
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        try:
            path = self.job_path(src, job_id)
            try:
                job = self.read_for_rewrite(path, src).with_meta(**changes)
            except FileNotFoundError:
                return None
            self.write_job(path, job)
            if dest is not src:
                fsutil.move(path, self.job_path(dest, job_id))
            return Entry(dest, self.job_path(dest, job_id), job)
        finally:
            lock.release()
