"""The spool: ltxq's state machine on disk, and its Python API. Never prints, never imports torch.

The protocol (DESIGN.md §1-2), in ten lines:
- A job is one TOML file named by its zero-padded id; its state is the folder it is in.
- Ids come from `locks/last-id`, raised under `locks/spool.lock`; they are never reused.
- Every write is staged in `tmp/`, fsynced, published with one rename; then the folder is fsynced.
- `locks/<id>.lock` (flock) is held by whoever moves or rewrites a job, and by the daemon for as
  long as the job is in `running/`. Losing a rename race (FileNotFoundError) is a normal case.
- Claim: take the job's lock without blocking, then rename pending/ -> running/.
- Recovery: a `running/` file whose lock can be taken has no live owner: requeue it (attempts + 1),
  or fail it after max_attempts.
- A `pending/` file with any other name is adopted (validated, given an id, renamed); a broken
  one is moved to `invalid/` byte for byte, its error written beside it as NAME.error.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from ltxq import fsutil
from ltxq.errors import (BadArgument, ConfigError, JobNotFound, LtxqError, NotRegularFile,
                         WrongState)
from ltxq.fsutil import Lock, write_atomic
from ltxq.job import USER_JOB_KEYS, Job, JobMeta, dump_job, job_from_dict, now, parse_job
from ltxq.progress import stamp


class State(StrEnum):
    """The closed set of job states; each is a folder of the spool."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({State.DONE, State.FAILED, State.CANCELLED})
# Where `get` and `state_of` look for a job: pending/ last, so that a stray copy of a job in
# pending/ (not yet adopted under a new id) never hides the job itself.
_LOOKUP = (State.RUNNING, State.DONE, State.FAILED, State.CANCELLED, State.PENDING)
_ID_NAME = re.compile(r"(\d{6,})\.toml")
_OTHER_DIRS = ("logs", "locks", "control", "tmp", "invalid")
_T = TypeVar("_T")


def file_name(job_id: int) -> str:
    """Return the spool file name of JOB_ID (zero-padded so `ls` shows queue order)."""
    return f"{job_id:06d}.toml"


def stem(job_id: int) -> str:
    """Return the zero-padded id used for a job's log, lock and control files."""
    return f"{job_id:06d}"


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


@dataclass
class Scanned(Generic[_T]):
    """What a scan found: (state, path, content) by id, unreadable files, unread files by state."""

    found: list[tuple[State, Path, _T]]
    problems: list[Invalid]
    skipped: dict[State, int]


@dataclass
class Claim:
    """A running job and the lock that proves its daemon is alive; released on finish/requeue."""

    entry: Entry
    lock: Lock

    @property
    def id(self) -> int:
        return self.entry.id

    @property
    def job(self) -> Job:
        return self.entry.job


def apply_overrides(doc: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return DOC with SECTION.KEY (or SECTION__KEY) values set; [job] keys may be given bare."""
    doc = copy.deepcopy(doc)
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        if dotted in USER_JOB_KEYS:
            dotted = f"job.{dotted}"
        parts = dotted.split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError("expected SECTION.KEY, e.g. optimization.steps", key=dotted)
        table = doc.setdefault(parts[0], {})
        if not isinstance(table, dict):
            raise ConfigError("must be a table", key=parts[0])
        table[parts[1]] = value
    return doc


def fresh_job(job: Job, *, default_name: str = "") -> Job:
    """Return JOB with only the user's [job] keys kept: a new job, not a copy of an old run."""
    meta = job.meta
    return dataclasses.replace(job, meta=JobMeta(
        name=meta.name or default_name, priority=meta.priority, max_attempts=meta.max_attempts,
        after=list(meta.after), on_finish=meta.on_finish))


class Spool:
    """A spool folder: the queue's whole state. Constructing one does no I/O."""

    def __init__(self, path: Path | str, *, clock: Callable[[], datetime] = now,
                 settle_seconds: float = 1.0):
        self.path = Path(path).absolute()
        self.clock = clock
        # A hand-dropped file younger than this may still be being written: leave it alone.
        self.settle_seconds = settle_seconds
        self._ready = False

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    # --- layout ----------------------------------------------------------------------------

    def dir(self, name: State | str) -> Path:
        """Return the folder of a state (or of logs, locks, control, tmp, invalid)."""
        self.ensure()
        return self.path / str(name)

    def ensure(self) -> None:
        """Create the spool's folders if they do not exist yet."""
        if self._ready:
            return
        for name in (*State, *_OTHER_DIRS):
            (self.path / str(name)).mkdir(parents=True, exist_ok=True)
        self._ready = True

    def log_path(self, job_id: int) -> Path:
        """Return the job's append-only log file."""
        return self.dir("logs") / f"{stem(job_id)}.log"

    def cancel_path(self, job_id: int) -> Path:
        """Return the control file that asks the job's daemon to stop it."""
        return self.dir("control") / f"{stem(job_id)}.cancel"

    def lock(self, job_id: int) -> Lock:
        """Return (not taken) the lock of JOB_ID."""
        return Lock(self.dir("locks") / f"{stem(job_id)}.lock")

    def log(self, job_id: int, message: str) -> None:
        """Append one time-stamped line to the job's log."""
        fd = os.open(self.log_path(job_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, stamp(message).encode("utf-8"))
        finally:
            os.close(fd)

    def _write(self, dest: Path, job: Job) -> None:
        write_atomic(dest, dump_job(job), self.dir("tmp"))

    # --- submit ----------------------------------------------------------------------------

    def submit(self, config_path: Path | str, *, unique: bool = False, **overrides: Any) -> int:
        """Validate CONFIG_PATH (with SECTION.KEY overrides) and queue it; return the new id.

        Nothing is written if the file is invalid. With UNIQUE, an identical config already
        pending or running is not queued again: its id is returned instead.
        """
        return self.publish(self.prepare(config_path, overrides), unique=unique)

    def prepare(self, config_path: Path | str, overrides: Mapping[str, Any] | None = None,
                ) -> Job:
        """Read and validate a config file for submission; raise ConfigError naming file and key."""
        path = Path(config_path)
        try:
            text = path.read_bytes().decode("utf-8")
            doc = tomllib.loads(text)
        except FileNotFoundError:
            raise ConfigError("file not found", file=path) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read: {e}", file=path) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"invalid TOML: {e}", file=path) from None
        return self.prepare_doc(doc, base_dir=path.parent.absolute(), file=path,
                                overrides=overrides, default_name=path.stem)

    def prepare_doc(self, doc: dict[str, Any], *, base_dir: Path, file: Path | str | None = None,
                    overrides: Mapping[str, Any] | None = None, default_name: str = "") -> Job:
        """Validate a TOML dict for submission (paths relative to BASE_DIR)."""
        try:
            doc = apply_overrides(doc, overrides or {})
        except ConfigError as e:
            raise (e.with_file(file) if file else e) from None
        job = job_from_dict(doc, file=file, base_dir=base_dir, require_dataset_exists=True)
        job = fresh_job(job, default_name=default_name or Path(job.config.data.dataset).name)
        check_name(job, file)
        self.check_parents(job, file)
        return job

    def check_parents(self, job: Job, file: Path | str | None = None) -> None:
        """Raise ConfigError (key job.after) if a job named in [job].after is not in the spool,
        is the job itself, or waits (through its own [job].after) for this job: a cycle."""
        own = job.meta.id
        for parent in job.meta.after:
            if parent == own:
                raise ConfigError(f"job {own} cannot wait for itself", key="job.after", file=file)
            if self.state_of(parent) is None:
                raise ConfigError(f"job {parent} is not in {self.path}", key="job.after",
                                  file=file)
        if own is None:
            return  # a new job: nothing can wait for it yet
        paths = [[own, p] for p in job.meta.after]
        seen = set()
        while paths:
            path = paths.pop()
            if path[-1] in seen:
                continue
            seen.add(path[-1])
            try:
                after = self.get(path[-1]).job.meta.after
            except LtxqError:
                continue
            for parent in after:
                if parent == own:
                    raise ConfigError("dependency cycle: " + " -> ".join(map(str, path + [own])),
                                      key="job.after", file=file)
                paths.append(path + [parent])

    def publish(self, job: Job, *, unique: bool = False) -> int:
        """Give a validated JOB an id and publish it in pending/ with one rename; return the id."""
        with Lock(self.dir("locks") / "spool.lock"):
            if unique:
                fingerprint = job.fingerprint()
                for entry in self.jobs([State.PENDING, State.RUNNING]):
                    if entry.job.fingerprint() == fingerprint:
                        return entry.id
            job_id = self._next_id()
            job = job.with_meta(id=job_id, submitted_at=self.clock(), output_dir=None)
            job = job.with_meta(output_dir=str(job.output_dir()))
            self._write(self.dir(State.PENDING) / file_name(job_id), job)
        return job_id

    def _next_id(self) -> int:
        """Allocate an id (caller holds spool.lock): above the counter and every file present."""
        counter = self.dir("locks") / "last-id"
        try:
            last = int(counter.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        for state in State:
            for name in os.listdir(self.dir(state)):
                m = _ID_NAME.fullmatch(name)
                if m:
                    last = max(last, int(m[1]))
        write_atomic(counter, f"{last + 1}\n", self.dir("tmp"))
        return last + 1

    # --- reading ---------------------------------------------------------------------------

    def jobs(self, state: State | str | Iterable[State | str] | None = None) -> list[Entry]:
        """Return the jobs in STATE (a state, several, or None = all), by id."""
        return self.scan(state)[0]

    def scan(self, state: State | str | Iterable[State | str] | None = None,
             ) -> tuple[list[Entry], list[Invalid]]:
        """Return the jobs in STATE by id, and every file the spool could not read as a job.

        Adopts hand-dropped pending/ files and moves broken ones to invalid/ on the way.
        """
        scanned = self.scan_with(self._read, state)
        return [Entry(st, path, job) for st, path, job in scanned.found], scanned.problems

    def scan_with(self, read: Callable[[Path, State], _T],
                  state: State | str | Iterable[State | str] | None = None, *,
                  select: Callable[[State, int], bool] | None = None) -> Scanned[_T]:
        """Like `scan`, with READ(path, state) in place of the full reader (status caches).

        READ must behave like the full reader: FileNotFoundError if the file moved on,
        ConfigError if it is not a valid job of the id its name says. Files for which
        SELECT(state, id) is false are not read, only counted in `skipped`.
        """
        states = _states(state)
        _, copies = self._adopt_pass()
        by_id: dict[int, tuple[State, Path, _T] | State] = {}
        problems: list[Invalid] = []
        for st in states:
            folder = self.dir(st)
            for name in sorted(os.listdir(folder)):
                m = _ID_NAME.fullmatch(name)
                if not m:
                    continue
                job_id = int(m[1])
                if st is State.PENDING and name in copies:
                    continue  # a copy of a job in another folder, adopted once settled
                if select is not None and not select(st, job_id):
                    by_id[job_id] = st
                    continue
                path = folder / name
                try:
                    entry = (st, path, read(path, st))
                except FileNotFoundError:
                    continue  # it moved on while we looked; a later folder may show it
                except NotRegularFile as e:
                    if st is State.PENDING:  # moved aside to invalid/, shown from there
                        self._set_aside(path, e.message, job_id)
                    continue  # elsewhere: no job, skipped
                except ConfigError as e:
                    # Pending under a job's name but not that job: a copy or a bare config
                    # is adopted, a broken file moved aside.
                    if st is not State.PENDING or (self._take_in(path) is None
                                                   and path.exists()):
                        problems.append(Invalid(path, f"{st}/{name}", str(e)))
                    continue
                by_id[job_id] = entry  # a job seen twice (it moved): the later folder wins
        problems.extend(self.invalid())
        scanned: Scanned[_T] = Scanned([], problems, {})
        for job_id in sorted(by_id):
            item = by_id[job_id]
            if isinstance(item, tuple):
                scanned.found.append(item)
            else:
                scanned.skipped[item] = scanned.skipped.get(item, 0) + 1
        return scanned

    def ids(self, state: State | str | Iterable[State | str]) -> list[int]:
        """Return the ids of the job files in STATE's folder(s), sorted; reads no file."""
        out = set()
        for st in _states(state):
            for name in os.listdir(self.dir(st)):
                m = _ID_NAME.fullmatch(name)
                if m:
                    out.add(int(m[1]))
        return sorted(out)

    def invalid(self) -> list[Invalid]:
        """Return the files moved aside to invalid/, with their errors."""
        out = []
        folder = self.dir("invalid")
        for name in sorted(os.listdir(folder)):
            if name.endswith(".error"):
                continue
            try:
                origin, _, error = (folder / f"{name}.error").read_text().strip().partition(": ")
            except FileNotFoundError:
                origin, error = name, "(being moved aside)"
            out.append(Invalid(folder / name, origin, error))
        return out

    def get(self, job_id: int | str) -> Entry:
        """Return job JOB_ID (an int or a numeric string) wherever it is; JobNotFound if it is
        in no folder."""
        job_id = _job_id(job_id)
        for _ in range(3):  # a job moving backwards (requeue) can slip past one pass
            for st in _LOOKUP:
                path = self.dir(st) / file_name(job_id)
                try:
                    return Entry(st, path, self._read(path, st))
                except FileNotFoundError:
                    continue
                except ConfigError as e:
                    raise LtxqError(f"job {job_id} is unreadable: {e}") from None
        raise JobNotFound(f"no job {job_id} in {self.path}")

    def state_of(self, job_id: int) -> State | None:
        """Return the folder job JOB_ID is in, or None."""
        for _ in range(2):
            for st in _LOOKUP:
                if (self.dir(st) / file_name(job_id)).exists():
                    return st
        return None

    def _read(self, path: Path, state: State) -> Job:
        return self.parse_file(fsutil.read_regular(path)[1], path, state)

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

    # --- hand-dropped files ----------------------------------------------------------------

    def adopt(self) -> list[int]:
        """Adopt settled hand-dropped pending/ files; move broken ones to invalid/.

        A pending/ file named like a job that is in another folder too (a copy of a finished
        job, to run it again) is a hand-dropped file: it is adopted under a new id.
        """
        return self._adopt_pass()[0]

    def _adopt_pass(self) -> tuple[list[int], set[str]]:
        """Adopt what `adopt` adopts; return the new ids and the names of pending/ copies of
        jobs in other folders that are left there (not settled yet, or locked)."""
        adopted: list[int] = []
        pending = self.dir(State.PENDING)
        names = os.listdir(pending)
        numbered = {n for n in names if _ID_NAME.fullmatch(n)}
        copies: set[str] = set()
        if numbered:
            for st in _LOOKUP[:-1]:
                copies.update(numbered.intersection(os.listdir(self.dir(st))))
        for name in names:
            if name.startswith(".") or not name.endswith(".toml") or (
                    name in numbered and name not in copies):
                continue  # editor swap files, partial copies named .x.tmp; queued jobs
            if name in copies:
                new_id = self._take_in_copy(pending / name)
                if new_id is None and os.path.lexists(pending / name):
                    continue
                copies.discard(name)
            else:
                new_id = self._take_in(pending / name)
            if new_id is not None:
                adopted.append(new_id)
        return adopted, copies

    def _take_in_copy(self, path: Path) -> int | None:
        """Adopt PATH, a pending/ file named like a job in another folder, as a new job."""
        job_id = int(path.stem)
        lock = self.lock(job_id)
        if not lock.try_acquire():
            return None  # the job is moving right now: look again next time
        try:
            # Under the job's lock nothing moves it: is it still in two folders?
            if not any((self.dir(st) / path.name).exists() for st in _LOOKUP[:-1]):
                return None
            return self._take_in(path, locked=True)
        finally:
            lock.release()

    def _take_in(self, path: Path, *, locked: bool = False) -> int | None:
        """Adopt the settled pending/ file PATH as a new job, or move it aside if broken."""
        m = _ID_NAME.fullmatch(path.name)
        set_aside_id = int(m[1]) if m and not locked else None
        try:
            if time.time() - os.lstat(path).st_mtime < self.settle_seconds:
                return None  # may still be being written
            data = fsutil.read_regular(path)[1]
        except FileNotFoundError:
            return None
        except NotRegularFile as e:
            self._set_aside(path, e.message, set_aside_id)
            return None
        try:
            job = parse_job(data, base_dir=self.path.parent, require_dataset_exists=True)
        except ConfigError as e:
            self._set_aside(path, str(e), set_aside_id)
            return None
        return self._adopt(path, job)

    def _adopt(self, path: Path, job: Job) -> int | None:
        staged = self.dir("tmp") / f"adopt-{uuid.uuid4().hex[:8]}-{path.name}"
        try:
            fsutil.move(path, staged)  # the rename decides a race between two adopters
        except FileNotFoundError:
            return None
        job = fresh_job(job, default_name=Path(path.name).stem)
        try:
            check_name(job)
            self.check_parents(job)
            new_id = self.publish(job)
        except LtxqError as e:
            self._set_aside(staged, str(e), None, origin=f"pending/{path.name}", name=path.name)
            return None
        os.unlink(staged)
        self.log(new_id, f"adopted pending/{path.name} as job {new_id}")
        return new_id

    def _set_aside(self, path: Path, error: str, job_id: int | None,
                   origin: str | None = None, name: str | None = None) -> None:
        """Move PATH to invalid/ untouched, with ERROR beside it."""
        lock = self.lock(job_id) if job_id is not None else None
        if lock is not None and not lock.try_acquire():
            return  # someone works on it right now; look again next time
        try:
            origin = origin or f"{path.parent.name}/{path.name}"
            dest = fsutil.free_name(self.dir("invalid") / (name or path.name))
            try:
                fsutil.move(path, dest)
            except FileNotFoundError:
                return
            write_atomic(Path(f"{dest}.error"), f"{origin}: {error}\n", self.dir("tmp"))
        finally:
            if lock is not None:
                lock.release()

    # --- user transitions ------------------------------------------------------------------

    def cancel(self, job_id: int) -> State:
        """Cancel a pending job at once, or ask a running one to stop; return its state now.

        A running job is moved to cancelled/ by its daemon at the next step (RUNNING is
        returned); one whose daemon died is cancelled at once.
        """
        deadline = time.monotonic() + 10.0
        while True:
            entry = self.get(job_id)
            if entry.state is State.PENDING:
                if self._move_locked(job_id, State.PENDING, State.CANCELLED,
                                     finished_at=self.clock()):
                    self.log(job_id, "cancelled while pending")
                    return State.CANCELLED
            elif entry.state is State.RUNNING:
                if self._move_locked(job_id, State.RUNNING, State.CANCELLED,
                                     finished_at=self.clock(), worker=None):
                    self.log(job_id, "cancelled (its daemon was gone)")
                    return State.CANCELLED
                write_atomic(self.cancel_path(job_id), f"{self.clock().isoformat()}\n",
                             self.dir("tmp"))
                if self.state_of(job_id) is not State.RUNNING:
                    self.cancel_path(job_id).unlink(missing_ok=True)
                    continue  # it finished or was requeued meanwhile: look again
                return State.RUNNING
            else:
                raise WrongState(f"job {job_id} is already {entry.state}")
            if time.monotonic() > deadline:
                raise WrongState(f"job {job_id} is locked by another process; try again")
            time.sleep(0.05)  # a daemon holds the lock for the instant of a claim

    def resume(self, job_id: int, fresh: bool = False) -> int:
        """Queue a failed or cancelled job again under its id (it continues from its latest
        checkpoint); with FRESH, queue a new job with the same config; return the id queued."""
        entry = self.get(job_id)
        if fresh:
            job = fresh_job(entry.job)
            job = job.with_meta(after=[])
            return self.publish(job)
        if entry.state not in (State.FAILED, State.CANCELLED):
            raise WrongState(f"job {job_id} is {entry.state}; only failed or cancelled jobs "
                             "resume (use --fresh for a new run of the same config)")
        if not self._move_locked(job_id, entry.state, State.PENDING, attempts=0, error=None,
                                 finished_at=None, worker=None, wait=5.0):
            raise WrongState(f"job {job_id} changed meanwhile; try again")
        self.log(job_id, "resumed; continues from its latest checkpoint")
        return job_id

    def set_priority(self, job_id: int, priority: int) -> None:
        """Change the priority of a pending job."""
        if not -1_000_000 <= priority <= 1_000_000:
            raise ConfigError(f"must be between -1000000 and 1000000, got {priority}",
                              key="job.priority")
        entry = self.get(job_id)
        if entry.state is not State.PENDING:
            raise WrongState(f"job {job_id} is {entry.state}; only pending jobs can be reordered")
        if not self._move_locked(job_id, State.PENDING, State.PENDING, wait=5.0,
                                 priority=priority):
            raise WrongState(f"job {job_id} was claimed meanwhile; priority not changed")

    def replace_pending(self, job_id: int, expected: bytes, text: str) -> Job:
        """Replace pending job JOB_ID by TEXT if its file still holds EXPECTED; return the job.

        Refused (WrongState) when the job was claimed, cancelled or changed meanwhile.
        """
        path = self.dir(State.PENDING) / file_name(job_id)
        job = parse_job(text, file=path, base_dir=self.path.parent, require_dataset_exists=True)
        if job.meta.id != job_id:
            raise ConfigError(f"must stay {job_id}", key="job.id", file=path)
        check_name(job, path)
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
            self._write(path, job)
        finally:
            lock.release()
        return job

    def clear(self, states: Iterable[State | str] = (State.DONE,), *,
              older_than: timedelta | None = None) -> list[int]:
        """Remove finished jobs' spool files and logs (never their outputs); return their ids."""
        states = _states(states)
        busy = [s for s in states if not s.finished]
        if busy:
            raise WrongState(f"clear only removes finished jobs, not {busy[0]} ones")
        cutoff = self.clock() - older_than if older_than is not None else None
        cleared = []
        for entry in self.jobs(states):
            if cutoff is not None and (entry.job.meta.finished_at or _mtime(entry.path)) > cutoff:
                continue
            lock = self.lock(entry.id)
            if not lock.try_acquire():
                continue
            try:
                entry.path.unlink()
            except FileNotFoundError:
                continue  # resumed or cleared meanwhile
            finally:
                lock.release()
            self.log_path(entry.id).unlink(missing_ok=True)
            for output in self.dir("logs").glob(f"{stem(entry.id)}.slurm-*.out"):
                output.unlink(missing_ok=True)
            self.cancel_path(entry.id).unlink(missing_ok=True)
            cleared.append(entry.id)
        if cleared:
            for st in states:
                fsutil.fsync_dir(self.dir(st))
        return cleared

    def pause(self) -> None:
        """Stop every daemon on this spool from claiming new jobs (running ones go on)."""
        write_atomic(self.dir("control") / "pause", f"{self.clock().isoformat()}\n",
                     self.dir("tmp"))

    def unpause(self) -> None:
        """Let daemons claim jobs again."""
        (self.dir("control") / "pause").unlink(missing_ok=True)

    @property
    def paused(self) -> bool:
        return (self.dir("control") / "pause").exists()

    def _move_locked(self, job_id: int, src: State, dest: State, *, wait: float = 0.0,
                     **changes: Any) -> bool:
        """Under the job's lock, rewrite the job with CHANGES and move it SRC -> DEST.

        Return False if the lock is busy (after WAIT seconds) or the file is no longer in SRC.
        """
        lock = self.lock(job_id)
        deadline = time.monotonic() + wait
        while not lock.try_acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        try:
            path = self.dir(src) / file_name(job_id)
            try:
                job = self._read(path, src)
            except FileNotFoundError:
                return False
            self._write(path, job.with_meta(**changes))
            if dest is not src:
                fsutil.move(path, self.dir(dest) / file_name(job_id))
            return True
        finally:
            lock.release()

    # --- daemon transitions ----------------------------------------------------------------

    def claim(self, worker: str, device: str | None = None,
              failed: list[Entry] | None = None) -> Claim | None:
        """Claim the first runnable pending job (priority, then id) for WORKER, or None.

        Jobs waiting for [job].after parents are skipped; those whose parent failed, was
        cancelled or is gone, and those caught in a dependency cycle, are moved to failed/ on
        the way (and appended to FAILED, as they are now).
        """
        pending = self.jobs(State.PENDING)
        pending.sort(key=lambda e: (-e.job.meta.priority, e.id))
        graph = {e.id: e.job.meta.after for e in pending}
        for entry in pending:
            if entry.job.meta.after:
                cycle = _cycle_from(entry.id, graph)
                if cycle is not None:
                    self._fail_pending(entry, "dependency cycle: " + " -> ".join(map(str, cycle)),
                                       failed)
                    continue
            if entry.job.meta.after and not self._dependencies_done(entry, failed):
                continue
            claim = self._claim_one(entry.id, worker, device)
            if claim is not None:
                return claim
        return None

    def _fail_pending(self, entry: Entry, why: str, failed: list[Entry] | None) -> None:
        """Move pending ENTRY to failed/ with error WHY (unless it moved on meanwhile)."""
        finished_at = self.clock()
        if self._move_locked(entry.id, State.PENDING, State.FAILED, error=why,
                             finished_at=finished_at):
            self.log(entry.id, why)
            if failed is not None:
                failed.append(Entry(State.FAILED, self.dir(State.FAILED) / file_name(entry.id),
                                    entry.job.with_meta(error=why, finished_at=finished_at)))

    def _dependencies_done(self, entry: Entry, failed: list[Entry] | None = None) -> bool:
        for parent in entry.job.meta.after:
            state = self.state_of(parent)
            if state is State.DONE:
                continue
            if state in (State.PENDING, State.RUNNING):
                return False
            why = f"dependency {parent} failed" + (
                f" (it was {state})" if state is State.CANCELLED else
                " (it is no longer in the spool)" if state is None else "")
            self._fail_pending(entry, why, failed)
            return False
        return True

    def _claim_one(self, job_id: int, worker: str, device: str | None) -> Claim | None:
        lock = self.lock(job_id)
        if not lock.try_acquire():
            return None  # another daemon is claiming it, or a user is changing it
        try:
            src = self.dir(State.PENDING) / file_name(job_id)
            dest = self.dir(State.RUNNING) / file_name(job_id)
            try:
                job = self._read(src, State.PENDING)
            except FileNotFoundError:
                lock.release()
                return None
            except ConfigError as e:
                lock.release()
                self._set_aside(src, str(e), job_id)
                return None
            # A stale request from an earlier run must not stop this one; cancels from now on
            # see the job in running/ and are honoured.
            self.cancel_path(job_id).unlink(missing_ok=True)
            fsutil.move(src, dest)
            job = job.with_meta(started_at=self.clock(), worker=worker, device=device,
                                error=None, finished_at=None, slurm_job_id=None)
            self._write(dest, job)
            return Claim(Entry(State.RUNNING, dest, job), lock)
        except FileNotFoundError:
            lock.release()
            return None
        except BaseException:
            lock.release()
            raise

    def update(self, claim: Claim, **changes: Any) -> None:
        """Rewrite the claimed running job's [job] fields (the daemon holds its lock)."""
        job = claim.job.with_meta(**changes)
        self._write(claim.entry.path, job)
        claim.entry = dataclasses.replace(claim.entry, job=job)

    def finish(self, claim: Claim, state: State, **changes: Any) -> None:
        """Record the outcome of a claimed job, move it to STATE, then release its lock."""
        try:
            if state is State.PENDING:
                changes.setdefault("worker", None)
            else:
                changes.setdefault("finished_at", self.clock())
            self.update(claim, **changes)
            dest = self.dir(state) / file_name(claim.id)
            fsutil.move(claim.entry.path, dest)
            claim.entry = dataclasses.replace(claim.entry, state=state, path=dest)
            self.cancel_path(claim.id).unlink(missing_ok=True)
        finally:
            claim.lock.release()

    def cancel_requested(self, job_id: int) -> bool:
        """Return True if someone asked to stop running job JOB_ID (one stat)."""
        return os.path.exists(self.path / "control" / f"{stem(job_id)}.cancel")

    def recover(self) -> list[tuple[int, State]]:
        """Requeue running jobs whose daemon died (attempts + 1), or fail them after
        max_attempts; return (id, new state) for each. Jobs with a Slurm id are left to a Slurm
        daemon (ltxq.slurm_executor), which knows whether their Slurm job still runs."""
        from ltxq.progress import last_progress

        recovered = []
        for name in sorted(os.listdir(self.dir(State.RUNNING))):
            m = _ID_NAME.fullmatch(name)
            if not m:
                continue
            job_id = int(m[1])
            lock = self.lock(job_id)
            if not lock.try_acquire():
                continue  # alive
            try:
                path = self.dir(State.RUNNING) / name
                try:
                    job = self._read(path, State.RUNNING)
                except (FileNotFoundError, NotRegularFile):
                    continue  # finished between our listdir and our lock; no job file at all
                except ConfigError as e:
                    lock.release()
                    self._set_aside(path, str(e), job_id)
                    continue
                meta = job.meta
                if meta.slurm_job_id:
                    continue  # its Slurm job may live on: a Slurm daemon adopts or settles it
                attempts = meta.attempts + 1
                progress = last_progress(self.log_path(job_id))
                step = progress.step if progress else meta.step
                who = meta.worker or "its daemon"
                if attempts >= meta.max_attempts:
                    state = State.FAILED
                    error = (f"interrupted {attempts} times (max_attempts {meta.max_attempts}); "
                             f"last run on {who} died")
                    job = job.with_meta(attempts=attempts, error=error, step=step,
                                        finished_at=self.clock())
                else:
                    state, error = State.PENDING, None
                    job = job.with_meta(attempts=attempts, worker=None, step=step)
                self._write(path, job)
                fsutil.move(path, self.dir(state) / name)
            finally:
                lock.release()
            self.log(job_id, error or f"recovered: {who} is gone; requeued to resume "
                                      f"(attempt {attempts} of {meta.max_attempts} used)")
            recovered.append((job_id, state))
        return recovered


def _cycle_from(start: int, graph: Mapping[int, list[int]]) -> list[int] | None:
    """Return [START, ..., START] if START waits for itself through GRAPH (id -> after), else
    None. Only pending jobs are in GRAPH: a cycle through any other job cannot block."""
    paths = [[start, p] for p in graph.get(start, ())]
    seen: set[int] = set()
    while paths:
        path = paths.pop()
        node = path[-1]
        if node == start:
            return path
        if node in seen or node not in graph:
            continue
        seen.add(node)
        paths.extend(path + [p] for p in graph[node])
    return None


def check_name(job: Job, file: Path | str | None = None) -> None:
    """Refuse a job name with a line break or another control character (it is one line in
    status, logs and hook environments)."""
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in job.meta.name):
        raise ConfigError(f"must not contain line breaks or control characters, got "
                          f"{job.meta.name!r}", key="job.name", file=file)


def _job_id(job_id: int | str) -> int:
    if isinstance(job_id, bool) or not isinstance(job_id, (int, str)):
        raise BadArgument(f"a job id is a positive integer, got {job_id!r}")
    if isinstance(job_id, str):
        if not job_id.strip().isdigit():
            raise BadArgument(f"a job id is a positive integer, got {job_id!r}")
        job_id = int(job_id)
    if job_id < 1:
        raise BadArgument(f"a job id is a positive integer, got {job_id!r}")
    return job_id


def _states(state: State | str | Iterable[State | str] | None) -> list[State]:
    if state is None or state == "all":
        return list(State)
    if isinstance(state, str):
        try:
            return [State(state)]
        except ValueError:
            raise BadArgument(f"unknown state {state!r}; expected one of "
                              f"{', '.join(State)} or all") from None
    out: list[State] = []
    for s in state:
        out.extend(_states(s))
    return list(dict.fromkeys(out))


def _mtime(path: Path) -> datetime:
    from datetime import timezone

    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except FileNotFoundError:
        return datetime.fromtimestamp(0, timezone.utc)
