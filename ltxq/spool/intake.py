"""Ways into the spool: `submit` (validate, then publish with one rename), adoption of files a
person drops into pending/, the invalid/ folder for what cannot be a job, and the tmp/ cleaner.

Adoption protocol: a settled file pending/NAME is renamed to tmp/adopt-KEY-NAME (the rename
decides a race between two adopters), published as a new job whose [job].key is KEY, then the
staged copy is removed. A crash in between leaves the staged file; the cleaner finds it later
and either removes it (a job with that key exists) or puts it back into pending/ to be adopted.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ltxq import fsutil
from ltxq import job as jobfile
from ltxq.errors import ConfigError, LtxqError, NotRegularFile
from ltxq.fsutil import Lock
from ltxq.job import USER_JOB_KEYS, Job, JobMeta, job_from_dict
from ltxq.spool import deps
from ltxq.spool.claimindex import ClaimIndex
from ltxq.spool.layout import LOOKUP, State, job_id_of
from ltxq.spool.store import Invalid, Store, to_adopt

ADOPT_PREFIX = "adopt-"
STAGING_SAFE_AGE_S = 600.0   # staged work older than this belongs to a process that died
EDIT_SAFE_AGE_S = 86400.0    # an `ltxq edit` buffer may stay open in an editor for a long time


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
        kind=meta.kind,  # issue 12: the job's kind is the user's, like its name
        name=meta.name or default_name, priority=meta.priority, max_attempts=meta.max_attempts,
        after=list(meta.after), on_finish=meta.on_finish))


class Intake(Store):
    """Submitting, adopting, setting aside; the spool's only writers of new job files."""

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
            data = fsutil.read_regular(path)[1]
        except FileNotFoundError:
            raise ConfigError("file not found", file=path) from None
        except OSError as e:
            raise ConfigError(f"cannot read: {e.strerror or e}", file=path) from None
        doc = jobfile.load_toml(data, file=path)
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
        jobfile.check_name(job, file)
        self.check_parents(job, file)
        return job

    def check_parents(self, job: Job, file: Path | str | None = None) -> None:
        """Raise ConfigError (key job.after) if a parent in [job].after is not in the spool, is
        the job itself, or waits (through its own [job].after) for this job."""
        if not job.meta.after:
            return
        self.require()
        deps.check_parents(job, self._after_of, self.state_of, str(self.path), file)

    def _after_of(self, job_id: int) -> list[int] | None:
        try:
            return self.get(job_id).job.meta.after
        except LtxqError:
            return None

    def publish(self, job: Job, *, unique: bool = False, key: str | None = None,
                author_uid: int | None = None) -> int:
        """Give a validated JOB an id (and a new key unless KEY) and publish it in pending/ with
        one rename; return the id. Its author is AUTHOR_UID (default: this process's uid).
        With UNIQUE, return the id of an identical pending or running job instead, if any."""
        self.create()
        with Lock(self.dir("locks") / "spool.lock"):
            if unique:
                # Read without adopting: adoption publishes, and we hold spool.lock.
                twin = self._find_twin(job.fingerprint())
                if twin is not None:
                    return twin
            job_id = self._next_id()
            key = key or uuid.uuid4().hex
            job = job.with_meta(id=job_id, key=key, submitted_at=self.clock(), output_dir=None,
                                author_uid=os.geteuid() if author_uid is None else author_uid)
            job = job.with_meta(output_dir=str(_free_output_dir(job)))
            dest = self.job_path(State.PENDING, job_id)
            self.write_job(dest, job)
        ClaimIndex(self).record(dest, job)
        return job_id

    def _find_twin(self, fingerprint: str) -> int | None:
        for state in (State.PENDING, State.RUNNING):
            for job_id in self.ids(state):
                try:
                    job = self.read(self.job_path(state, job_id), state)
                except (FileNotFoundError, ConfigError):
                    continue
                if job.fingerprint() == fingerprint:
                    return job_id
        return None

    def _next_id(self) -> int:
        """Allocate an id (caller holds spool.lock): above the counter and every file present."""
        counter = self.dir("locks") / "last-id"
        try:
            last = int(counter.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        for state in State:
            last = max(last, *self.numbered(state).values(), 0)
        self.write_text(counter, f"{last + 1}\n")
        return last + 1

    # --- hand-dropped files ----------------------------------------------------------------

    def before_scan(self) -> set[str]:
        """Adopt settled hand-dropped pending/ files first; return the names of pending/ copies
        of jobs in other folders that are still there (not settled yet, or locked)."""
        copies = self.copies()
        if not self.writable():
            return copies
        for name in to_adopt(self.listing(State.PENDING), self.numbered(State.PENDING), copies):
            path = self.dir(State.PENDING) / name
            if name in copies:
                self._take_in_copy(path)
                if not os.path.lexists(path):
                    copies.discard(name)
            else:
                self._take_in(path)
        return copies

    def bad_job_file(self, path: Path, state: State, job_id: int,
                     error: ConfigError) -> Invalid | None:
        """A pending file under a job's name but not that job: a copy or a bare config is
        adopted, a broken file moved aside (shown from invalid/)."""
        if state is not State.PENDING or not self.writable():
            return super().bad_job_file(path, state, job_id, error)
        if isinstance(error, NotRegularFile):
            self.set_aside(path, error.message, job_id)
            return None
        if self._take_in(path) is None and path.exists():
            return super().bad_job_file(path, state, job_id, error)
        return None

    def _take_in_copy(self, path: Path) -> int | None:
        """Adopt PATH, a pending/ file named like a job in another folder, as a new job."""
        lock = self.lock(int(path.stem))
        if not lock.try_acquire():
            return None  # the job is moving right now: look again next time
        try:
            # Under the job's lock nothing moves it: is it still in two folders?
            if not any((self.dir(st) / path.name).exists() for st in LOOKUP[:-1]):
                return None
            return self._take_in(path, locked=True)
        finally:
            lock.release()

    def _take_in(self, path: Path, *, locked: bool = False) -> int | None:
        """Adopt the settled pending/ file PATH as a new job, or move it aside if broken."""
        job_id = job_id_of(path.name)
        set_aside_id = job_id if job_id is not None and not locked else None
        try:
            if time.time() - os.lstat(path).st_mtime < self.settle_seconds:
                return None  # may still be being written
            st, data = fsutil.read_regular(path)
            job = jobfile.parse_job(data, base_dir=self.path.parent, require_dataset_exists=True)
        except FileNotFoundError:
            return None
        except ConfigError as e:  # NotRegularFile (a pipe, a huge file...) included
            self.set_aside(path, e.message if isinstance(e, NotRegularFile) else str(e),
                           set_aside_id)
            return None
        return self._adopt(path, job, st.st_uid)

    def _adopt(self, path: Path, job: Job, author_uid: int) -> int | None:
        key = uuid.uuid4().hex
        staged = self.tmp_dir() / f"{ADOPT_PREFIX}{key}-{path.name}"
        try:
            fsutil.move(path, staged)  # the rename decides a race between two adopters
        except FileNotFoundError:
            return None
        job = fresh_job(job, default_name=Path(path.name).stem)
        try:
            jobfile.check_name(job)
            self.check_parents(job)
            new_id = self.publish(job, key=key, author_uid=author_uid)
        except LtxqError as e:
            self.set_aside(staged, str(e), None, origin=f"pending/{path.name}", name=path.name)
            return None
        os.unlink(staged)
        self.log(new_id, f"adopted pending/{path.name} as job {new_id}")
        return new_id

    def set_aside(self, path: Path, error: str, job_id: int | None,
                  origin: str | None = None, name: str | None = None) -> None:
        """Move PATH to invalid/ untouched, with ERROR beside it."""
        lock = self.lock(job_id) if job_id is not None else None
        if lock is not None and not lock.try_acquire():
            return  # someone works on it right now; look again next time
        try:
            origin = origin or f"{path.parent.name}/{path.name}"
            invalid = self.dir("invalid")
            invalid.mkdir(exist_ok=True)
            dest = fsutil.free_name(invalid / (name or path.name))
            try:
                fsutil.move(path, dest)
            except FileNotFoundError:
                return
            self.write_text(Path(f"{dest}.error"), f"{origin}: {error}\n")
        finally:
            if lock is not None:
                lock.release()

    # --- the tmp/ cleaner ------------------------------------------------------------------

    def clean_tmp(self, *, safe_age: float = STAGING_SAFE_AGE_S) -> list[str]:
        """Finish or roll back staged work in tmp/ older than SAFE_AGE seconds (its process
        died); return one line per thing done, for the daemon's log."""
        tmp = self.tmp_dir()
        done: list[str] = []
        now = time.time()
        for name in sorted(os.listdir(tmp)):
            path = tmp / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            age = now - st.st_mtime
            if name.startswith(ADOPT_PREFIX) and age >= safe_age:
                done.append(self._roll_back_adoption(path))
            elif name.endswith(".tmp") and age >= safe_age:
                path.unlink(missing_ok=True)  # a write_atomic staging file of a dead process
                done.append(f"removed dead staging file tmp/{name}")
            elif name.startswith("ended-") and age >= safe_age:
                done.append(self._put_back_note(path))
            elif name.startswith("edit-") and age >= EDIT_SAFE_AGE_S:
                path.unlink(missing_ok=True)
                done.append(f"removed abandoned edit buffer tmp/{name}")
        return done

    def _put_back_note(self, staged: Path) -> str:
        """A daemon died while taking an `ended` note: give the note back to control/."""
        note = staged.name.split("-", 2)[-1]
        try:
            os.rename(staged, self.dir("control") / note)
        except FileNotFoundError:
            return f"tmp/{staged.name} vanished meanwhile"
        return f"put back tmp/{staged.name} as control/{note} (its on_finish had not run)"

    def _roll_back_adoption(self, staged: Path) -> str:
        """A staged adoption whose adopter died: drop it if its job was published, else put the
        file back into pending/ (adopted again next pass), or into invalid/ if that fails."""
        key, _, original = staged.name[len(ADOPT_PREFIX):].partition("-")
        adopted = self._job_with_key(key)
        if adopted is not None:
            staged.unlink(missing_ok=True)
            return f"removed tmp/{staged.name}: job {adopted} was adopted from it"
        dest = fsutil.free_name(self.dir(State.PENDING) / (original or "dropped.toml"))
        try:
            os.link(staged, dest)  # never over another file
            os.unlink(staged)
            fsutil.fsync_dir(dest.parent)
        except FileNotFoundError:
            return f"tmp/{staged.name} vanished meanwhile"
        except OSError as e:
            self.set_aside(staged, f"an interrupted adoption could not be put back: {e}", None,
                           origin=f"pending/{original}", name=original or staged.name)
            return f"moved tmp/{staged.name} to invalid/ ({e.strerror or e})"
        return f"put back tmp/{staged.name} as pending/{dest.name} (its adoption was interrupted)"

    def _job_with_key(self, key: str) -> int | None:
        for entry in self.jobs():
            if getattr(entry.job.meta, "key", None) == key:
                return entry.id
        return None


def _free_output_dir(job: Job) -> Path:
    """Return JOB's output folder: the usual name unless another job's outputs are there."""
    from ltxq.outputs import pick_output_dir

    assert job.meta.key is not None
    if job.kind != "train":  # issue 12: caption/preprocess jobs work in their dataset folder
        return job.output_dir()
    return pick_output_dir(job.output_dir(), job.meta.key)

