"""Where everything of a spool lives: its states (folders), names, paths, and the folder itself.

Constructing a spool does no I/O. Only `create()` makes a spool (the commands that own one,
submit and daemon, call it); every other use of a missing spool raises NoSpool. Folders that are
safe to delete (tmp/, locks/, control/, logs/) are re-created on demand where they are written.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from ltxq.errors import BadArgument, NoSpool
from ltxq.fsutil import Lock, write_atomic
from ltxq.job import Job, dump_job, now
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
LOOKUP = (State.RUNNING, State.DONE, State.FAILED, State.CANCELLED, State.PENDING)
ID_NAME = re.compile(r"(\d{6,})\.toml")
OTHER_DIRS = ("logs", "locks", "control", "tmp", "invalid")


def file_name(job_id: int) -> str:
    """Return the spool file name of JOB_ID (zero-padded so `ls` shows queue order)."""
    return f"{job_id:06d}.toml"


def stem(job_id: int) -> str:
    """Return the zero-padded id used for a job's log, lock and control files."""
    return f"{job_id:06d}"


def job_id_of(name: str) -> int | None:
    """Return the id a job file NAME stands for, or None for any other name."""
    m = ID_NAME.fullmatch(name)
    return int(m[1]) if m else None


def states(state: State | str | Iterable[State | str] | None) -> list[State]:
    """Return STATE as a list of states (None or "all" = every state); BadArgument if unknown."""
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
        out.extend(states(s))
    return list(dict.fromkeys(out))


def parse_job_id(job_id: int | str) -> int:
    """Return JOB_ID (an int or a numeric string) as an int; BadArgument otherwise."""
    if isinstance(job_id, bool) or not isinstance(job_id, (int, str)):
        raise BadArgument(f"a job id is a positive integer, got {job_id!r}")
    if isinstance(job_id, str):
        if not job_id.strip().isdigit():
            raise BadArgument(f"a job id is a positive integer, got {job_id!r}")
        job_id = int(job_id)
    if job_id < 1:
        raise BadArgument(f"a job id is a positive integer, got {job_id!r}")
    return job_id


class Layout:
    """A spool folder's paths; the base of the Spool facade. Constructing one does no I/O."""

    def __init__(self, path: Path | str, *, clock: Callable[[], datetime] = now,
                 settle_seconds: float = 1.0):
        self.path = Path(path).absolute()
        self.clock = clock
        # A hand-dropped file younger than this may still be being written: leave it alone.
        self.settle_seconds = settle_seconds
        self._ready = False
        self._listings: dict[str, tuple[tuple[int, int], list[str], dict[str, int]]] = {}

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    def exists(self) -> bool:
        """Return True if PATH is a spool (it has a pending/ folder)."""
        return (self.path / State.PENDING).is_dir()

    def require(self) -> None:
        """Raise NoSpool unless PATH is a spool."""
        if not self._ready:
            if not self.exists():
                raise NoSpool(f"no spool at {self.path}")
            self._ready = True

    def create(self) -> None:
        """Make PATH a spool: a new or empty folder, or one that is a spool already (its
        missing folders are made again). BadArgument for any other folder."""
        if not self.exists():
            try:
                entries = os.listdir(self.path)
            except FileNotFoundError:
                entries = []
            except NotADirectoryError:
                raise BadArgument(f"--spool {self.path}: not a folder") from None
            if entries:
                raise BadArgument(f"--spool {self.path}: the folder is not empty and is not a "
                                  "spool; give a new or empty folder")
        for name in (*State, *OTHER_DIRS):
            (self.path / str(name)).mkdir(parents=True, exist_ok=True)
        self._ready = True

    def dir(self, name: State | str) -> Path:
        """Return the folder of a state (or of logs, locks, control, tmp, invalid)."""
        self.require()
        return self.path / str(name)

    def listing(self, name: State | str) -> list[str]:
        """Return the names in folder NAME (do not change the list). A listing is reused while
        the folder's mtime is unchanged and over 2 s old (a change within the clock's
        granularity could keep it), so status and a daemon's passes list a big folder once."""
        return self._listed(name)[1]

    def numbered(self, name: State | str) -> dict[str, int]:
        """Return {file name: job id} of the job files in folder NAME (do not change it)."""
        return self._listed(name)[2]

    def _listed(self, name: State | str) -> tuple[tuple[int, int], list[str], dict[str, int]]:
        path = self.dir(name)
        st = os.stat(path)
        key = (st.st_ino, st.st_mtime_ns)
        cached = self._listings.get(str(name))
        if cached is not None and cached[0] == key:
            return cached
        names = os.listdir(path)
        listed = (key, names, {n: i for n in names if (i := job_id_of(n)) is not None})
        if st.st_mtime_ns < time.time_ns() - 2_000_000_000:
            self._listings[str(name)] = listed
        return listed

    def tmp_dir(self) -> Path:
        """Return tmp/, made again if someone deleted it (it is safe to delete at any time)."""
        tmp = self.dir("tmp")
        tmp.mkdir(exist_ok=True)
        return tmp

    def log_path(self, job_id: int) -> Path:
        """Return the job's append-only log file."""
        return self.dir("logs") / f"{stem(job_id)}.log"

    def cancel_path(self, job_id: int) -> Path:
        """Return the control file that asks the job's daemon to stop it."""
        return self.dir("control") / f"{stem(job_id)}.cancel"

    def job_path(self, state: State, job_id: int) -> Path:
        """Return where job JOB_ID's file is when it is in STATE."""
        return self.dir(state) / file_name(job_id)

    def lock(self, job_id: int) -> Lock:
        """Return (not taken) the lock of JOB_ID; locks/ is made again if it was deleted."""
        return Lock(self.dir("locks") / f"{stem(job_id)}.lock")

    def log(self, job_id: int, message: str) -> None:
        """Append one time-stamped line to the job's log."""
        path = self.log_path(job_id)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:  # logs/ deleted by hand: the log goes on in a new one
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, flags, 0o666)
        try:
            os.write(fd, stamp(message).encode("utf-8"))
        finally:
            os.close(fd)

    def write_text(self, dest: Path, data: str | bytes) -> None:
        """Publish DATA at DEST atomically (staged in tmp/)."""
        write_atomic(dest, data, self.dir("tmp"))  # it makes tmp/ again if it was deleted

    def write_job(self, dest: Path, job: Job) -> None:
        """Publish JOB's file at DEST atomically."""
        self.write_text(dest, dump_job(job))

    @property
    def paused(self) -> bool:
        return (self.dir("control") / "pause").exists()
