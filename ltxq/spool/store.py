"""Reading the spool: a job by id, the jobs of some states, the files set aside. Never writes.

Losing a race is normal here: a file that moved on while we looked (FileNotFoundError) is looked
for again in the folder it moves to, or skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from ltxq import fsutil
from ltxq.errors import ConfigError, JobNotFound, LtxqError, NotRegularFile
from ltxq.job import Job, parse_job
from ltxq.spool.layout import (
    LOOKUP,
    Layout,
    State,
    parse_job_id,
    states,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Entry:
    """One job as the spool sees it: its state (the folder), its file and its content."""

    state: State
    path: Path
    job: Job

    @property
    def id(self) -> int:
        return self.job.id


@dataclass(frozen=True)
class Invalid:
    """A file the spool could not read as a job: where it is now and why."""

    path: Path
    origin: str
    error: str


@dataclass(frozen=True)
class Dropped:
    """A file in pending/ that is not a job yet: it waits to be adopted (or set aside)."""

    path: Path
    name: str
    reason: str


@dataclass
class Scanned(Generic[_T]):
    """What a scan found: (state, path, content) by id, unreadable files, unread files by state."""

    found: list[tuple[State, Path, _T]]
    problems: list[Invalid]
    skipped: dict[State, int]


class Store(Layout):
    """The read-only half of the spool."""

    def get(self, job_id: int | str) -> Entry:
        """Return job JOB_ID (an int or a numeric string) wherever it is; JobNotFound if it is
        in no folder."""
        job_id = parse_job_id(job_id)
        for _ in range(3):  # a job moving backwards (requeue) can slip past one pass
            for st in LOOKUP:
                path = self.job_path(st, job_id)
                try:
                    return Entry(st, path, self.read(path, st))
                except FileNotFoundError:
                    continue
                except ConfigError as e:
                    raise LtxqError(f"job {job_id} is unreadable: {e}") from None
        raise JobNotFound(f"no job {job_id} in {self.path}")

    def state_of(self, job_id: int) -> State | None:
        """Return the folder job JOB_ID is in, or None."""
        for _ in range(2):
            for st in LOOKUP:
                if self.job_path(st, job_id).exists():
                    return st
        return None

    def ids(self, state: State | str | Iterable[State | str]) -> list[int]:
        """Return the ids of the job files in STATE's folder(s), sorted; reads no file."""
        out = set()
        for st in states(state):
            out.update(self.numbered(st).values())
        return sorted(out)

    def read(self, path: Path, state: State) -> Job:
        """Read and validate job file PATH in STATE's folder (never a pipe or a huge file)."""
        return self.parse_file(fsutil.read_regular(path)[1], path, state)

    def read_for_rewrite(self, path: Path, state: State) -> Job:
        """Read job file PATH to rewrite it: its author_uid is kept only while the file was last
        written by that author or by this uid (ltxq's own bookkeeping); a file someone else
        wrote in place of it makes that someone its author (see `trusted`)."""
        st, data = fsutil.read_regular(path)
        job = self.parse_file(data, path, state)
        author = job.meta.author_uid
        if st.st_uid not in (author, os.geteuid()) or author is None:
            job = job.with_meta(author_uid=st.st_uid)
        return job

    @staticmethod
    def trusted(job: Job) -> bool:
        """Return True if JOB's own commands (on_finish, sbatch_args) may run as this uid: its
        content was written by this uid (as cron runs a crontab only as its owner)."""
        return job.meta.author_uid == os.geteuid()

    def parse_file(self, data: bytes, path: Path, state: State) -> Job:
        """Validate DATA, the bytes of job file PATH in STATE's folder (its name is its id)."""
        # Stored jobs hold absolute paths; a hand-edited pending file resolves like a dropped one.
        base = self.path.parent if state is State.PENDING else None
        job = parse_job(data, file=path, base_dir=base)
        expected = int(path.stem)
        if job.meta.id != expected:
            raise ConfigError(f"must be {expected} (the file's name), got {job.meta.id}",
                              key="job.id", file=path)
        return job

    def invalid(self) -> list[Invalid]:
        """Return the files moved aside to invalid/, with their errors."""
        out = []
        folder = self.dir("invalid")
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        for name in names:
            if name.endswith(".error"):
                continue
            try:
                origin, _, error = (folder / f"{name}.error").read_text().strip().partition(": ")
            except FileNotFoundError:
                origin, error = name, "(being moved aside)"
            except OSError as e:
                origin, error = name, f"(cannot read its error: {e.strerror})"
            out.append(Invalid(folder / name, origin, error))
        return out

    def dropped(self) -> list[Dropped]:
        """Return the files in pending/ that are not queued jobs yet: hand-dropped files waiting
        to be adopted, and copies of jobs that are in another folder."""
        pending = self.dir(State.PENDING)
        out = []
        copies = self.copies()
        writable = self.writable()
        for name in to_adopt(self.listing(State.PENDING), self.numbered(State.PENDING), copies):
            path = pending / name
            if not writable:
                reason = "cannot adopt: the spool is not writable for this user"
            else:
                try:
                    age = time.time() - os.lstat(path).st_mtime
                except FileNotFoundError:
                    continue
                reason = ("not adopted yet (settling)" if age < self.settle_seconds
                          else "not adopted yet")
            out.append(Dropped(path, name, reason))
        return out

    def writable(self) -> bool:
        """Return True if this process may adopt files and move broken ones (read commands on
        a spool they cannot write only look)."""
        return os.access(self.dir(State.PENDING), os.W_OK | os.X_OK) and os.access(
            self.path, os.W_OK | os.X_OK)

    def copies(self) -> set[str]:
        """Return the job file names in pending/ that name a job file in another folder too."""
        numbered = self.numbered(State.PENDING).keys()
        copies: set[str] = set()
        if numbered:
            for st in LOOKUP[:-1]:
                copies.update(numbered & self.numbered(st).keys())
        return copies

    def scan_with(self, read: Callable[[Path, State], _T],
                  state: State | str | Iterable[State | str] | None = None, *,
                  select: Callable[[State, int], bool] | None = None) -> Scanned[_T]:
        """Return the jobs in STATE by id (READ(path, state) gives each one's content), and every
        file that could not be read as a job.

        READ must behave like `read`: FileNotFoundError if the file moved on, ConfigError if it
        is not a valid job of the id its name says. Files for which SELECT(state, id) is false
        are not read, only counted in `skipped`. Pending copies of jobs in other folders are
        left out (they are adopted under new ids).
        """
        copies = self.before_scan()
        by_id: dict[int, tuple[State, Path, _T] | State] = {}
        problems: list[Invalid] = []
        for st in states(state):
            folder = self.dir(st)
            numbered = self.numbered(st)
            for name in sorted(numbered):
                job_id = numbered[name]
                if st is State.PENDING and name in copies:
                    continue
                if select is not None and not select(st, job_id):
                    by_id[job_id] = st
                    continue
                path = folder / name
                try:
                    by_id[job_id] = (st, path, read(path, st))  # a job seen twice: the later wins
                except FileNotFoundError:
                    continue  # it moved on while we looked; a later folder may show it
                except ConfigError as e:
                    problem = self.bad_job_file(path, st, job_id, e)
                    if problem is not None:
                        problems.append(problem)
        problems.extend(self.invalid())
        scanned: Scanned[_T] = Scanned([], problems, {})
        for job_id in sorted(by_id):
            item = by_id[job_id]
            if isinstance(item, tuple):
                scanned.found.append(item)
            else:
                scanned.skipped[item] = scanned.skipped.get(item, 0) + 1
        return scanned

    def before_scan(self) -> set[str]:
        """Return the names of pending/ copies of jobs in other folders (to leave out)."""
        return self.copies()

    def bad_job_file(self, path: Path, state: State, job_id: int,
                     error: ConfigError) -> Invalid | None:
        """Report a job file that does not read as its job (the intake adopts or sets it aside)."""
        if isinstance(error, NotRegularFile) and state is not State.PENDING:
            return None  # no job there at all: skipped
        return Invalid(path, f"{state}/{path.name}", str(error))

    def jobs(self, state: State | str | Iterable[State | str] | None = None) -> list[Entry]:
        """Return the jobs in STATE (a state, several, or None = all), by id."""
        return self.scan(state)[0]

    def scan(self, state: State | str | Iterable[State | str] | None = None,
             ) -> tuple[list[Entry], list[Invalid]]:
        """Return the jobs in STATE by id, and every file the spool could not read as a job."""
        scanned = self.scan_with(self.read, state)
        return [Entry(st, path, job) for st, path, job in scanned.found], scanned.problems


def to_adopt(names: Iterable[str], numbered: dict[str, int], copies: set[str]) -> list[str]:
    """Return, sorted, the dropped files to adopt among NAMES (pending/'s listing; NUMBERED
    its job files): those named *.toml (not an editor swap file or a partial copy named
    .x.tmp) that are not a queued job, unless a copy of one in another folder (COPIES)."""
    candidates = set(names).difference(numbered).union(copies)
    return sorted(n for n in candidates if n.endswith(".toml") and not n.startswith("."))

