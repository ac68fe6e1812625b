"""Read status records cheaply from a spool of any size.

The spool stays the only source of truth; three things keep a 10,000-job `status` fast:
- facts and log progress are cached per folder in tmp/ (ltxq.status.statcache), each under its
  file's stat key, so a job file is parsed and validated once, not on every run;
- the default table reads only the jobs it shows (running, the newest finished ones, the next
  pending ones to run), through small caches of just those (status-<state>.shown.cache.json),
  and counts the rest from the folder listings;
- the run order of a long pending/ comes from the spool's claim index (priorities, stat-keyed),
  so choosing the next pending jobs costs one stat per file, not a parse.
When many files are not in the cache (the first `status` after thousands of files appeared),
they are parsed and validated in forked worker processes (ltxq.status.forkpool), each exactly as
it would be here: the results are the same, including every invalid file with its error.
"""

from __future__ import annotations

import dataclasses
import heapq
import operator
import os
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ltxq.errors import ConfigError, NotRegularFile
from ltxq.fsutil import read_regular
from ltxq.job import JobMeta
from ltxq.progress import Progress, last_progress
from ltxq.spool import FINISHED, Spool, State, file_name, stem
from ltxq.spool.claimindex import UNREADABLE_PRIORITY
from ltxq.status.forkpool import fork_map
from ltxq.status.records import (
    NEXT_PENDING,
    RECENT_FINISHED,
    StatusView,
    build_record,
    dropped_record,
    fold_records,
    invalid_record,
    job_facts,
    job_record,
    needs_progress,
    run_order,
)
from ltxq.status.statcache import MISSING, StatCache, stat_key

# Uncached job files from which a refresh parses them in worker processes: below it, forking
# costs more than it saves (about 0.15 ms of parsing per file against ~20 ms per worker).
POOL_MIN_FILES = 200

# What the cached facts mean: bump when job_facts changes; a new [job] field changes it itself.
_FACTS_VERSION = "1:" + ",".join(f.name for f in dataclasses.fields(JobMeta))
_progress_values = operator.attrgetter(*(f.name for f in dataclasses.fields(Progress)))


class StatusReader:
    """Reads status records through the per-folder caches in the spool's tmp/ (see module doc).

    One reader per refresh: `view` saves the caches it used before returning. POOL_MIN is the
    number of uncached files from which `view` parses them in worker processes (None: never).
    """

    def __init__(self, spool: Spool, *, use_cache: bool = True,
                 pool_min: int | None = POOL_MIN_FILES):
        self.spool = spool
        self.use_cache = use_cache
        self.pool_min = pool_min
        self._caches: dict[str, StatCache] = {}  # by file name
        self._by_state: dict[tuple[State, bool], StatCache] = {}  # the same, by what `_cache` asks
        self._logs = spool.dir("logs")
        self._log_prefix = os.path.join(self._logs, "")  # a str: no Path per job (10,000 jobs)
        # States the folded table reads only a few files of: their own small caches, since
        # loading the cache of a whole folder of thousands costs more than it saves.
        self._shown: frozenset[State] = frozenset()
        self._ahead: dict[Path, tuple[Any, ...]] = {}  # what _read_ahead's workers found
        self._ahead_logs: dict[int, tuple[list[int] | None, list[Any]]] = {}  # by job id

    def _cache(self, state: State) -> StatCache | None:
        if not self.use_cache:
            return None
        shown = state in self._shown
        cache = self._by_state.get((state, shown))  # (asked twice per job: keep it cheap)
        if cache is None:
            name = f"status-{state}{'.shown' if shown else ''}.cache.json"
            tmp = self.spool.dir("tmp")
            cache = StatCache(tmp / name, tmp, f"{_FACTS_VERSION}:{self.spool.path}")
            self._caches[name] = self._by_state[state, shown] = cache
        return cache

    def facts(self, path: Path, state: State) -> dict[str, Any]:
        """Return the facts of job file PATH (cached; parsed and fully validated on a miss)."""
        cache = self._cache(state)
        ahead = self._ahead.pop(path, None)
        if ahead is None:
            if cache is not None:
                hit = cache.get(path.name, _stat(path))
                if hit is not MISSING:
                    return hit
            key, facts = self._parse(path, state)
        elif ahead[0] == "invalid":
            raise ConfigError(ahead[1], key=ahead[2], file=ahead[3])
        elif ahead[0] == "not regular":
            raise NotRegularFile(ahead[1], file=ahead[2])
        else:
            _, key, facts, log = ahead
            if log is not None:
                self._ahead_logs[facts["id"]] = log
        if cache is not None:
            cache.put_keyed(path.name, key, facts)
        return facts

    def _parse(self, path: Path, state: State) -> tuple[list[int], dict[str, Any]]:
        """Read, parse and validate job file PATH; return its stat key and its facts."""
        st, data = read_regular(path)  # never opens a pipe; NotRegularFile for a directory
        key = stat_key(st)  # the key of the very bytes parsed
        return key, job_facts(self.spool.parse_file(data, path, state))

    def _read_ahead(self, states: list[State],
                    select: Callable[[State, int], bool] | None) -> None:
        """Parse the job files of STATES missing from the caches in worker processes, if many.

        `facts` takes each result (facts, or the error) when the scan reaches that file; a file
        the workers could not read for another reason is read there again, as if never tried.
        """
        if self.pool_min is None:
            return
        todo: list[tuple[State, Path]] = []
        for st in states:
            cache, folder = self._cache(st), self.spool.dir(st)
            for job_id in self.spool.ids(st):
                name = file_name(job_id)
                if (select is None or select(st, job_id)) and (
                        cache is None or not cache.stored(name)):
                    todo.append((st, folder / name))
        if len(todo) < max(self.pool_min, 1):
            return
        results = fork_map(self._parse_in_worker, todo)
        if results is not None:
            self._ahead = {path: r for (_, path), r in zip(todo, results, strict=True)
                           if r is not None}

    def _parse_in_worker(self, item: tuple[State, Path]) -> tuple[Any, ...] | None:
        """Return ("facts", stat key, facts, log), ("invalid", message, key, file) or None (retry).

        LOG is what `_read_log` returns when `progress` will want it and the cache lacks it,
        else None. Plain data only: a pickled os.stat_result costs the parent more than the
        parsing saves.
        """
        state, path = item
        try:
            key, facts = self._parse(path, state)
            cache, log = self._cache(state), None
            if (cache is not None and needs_progress(state, facts)
                    and not cache.stored(f"log {stem(facts['id'])}")):
                log = self._read_log(facts["id"])
            return ("facts", key, facts, log)
        except NotRegularFile as e:
            return ("not regular", e.kind, e.file)
        except ConfigError as e:  # sent as plain data: the parent raises it again
            return ("invalid", e.message, e.key, e.file)
        except Exception:  # noqa: BLE001 - gone, unreadable: `facts` reads it and decides
            return None

    def progress(self, state: State, job_id: int) -> Progress | None:
        """Return the newest progress line of the job's log (cached once the log is settled)."""
        cache = self._cache(state)
        if cache is None:
            return last_progress(self._logs / f"{stem(job_id)}.log")
        name = f"log {stem(job_id)}"
        ahead = self._ahead_logs.pop(job_id, None)
        if ahead is not None:
            key, values = ahead
        else:
            try:
                st = os.stat(f"{self._log_prefix}{stem(job_id)}.log")
            except FileNotFoundError:
                return None
            hit = cache.get(name, st)
            if hit is not MISSING:
                return Progress(*hit) if hit else None
            key, values = self._read_log(job_id, st)
        if key is None:
            return None  # no log
        cache.put_keyed(name, key, values)
        return Progress(*values) if values else None

    def _read_log(self, job_id: int, st: os.stat_result | None = None,
                  ) -> tuple[list[int] | None, list[Any]]:
        """Return the log's stat key (None: no log) and its newest progress as cache values."""
        path = self._logs / f"{stem(job_id)}.log"
        if st is None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None, []
        progress = last_progress(path)
        return stat_key(st), list(_progress_values(progress)) if progress else []

    def next_pending(self, count: int = NEXT_PENDING) -> set[int] | None:
        """Return the ids of the COUNT pending jobs that run first, or None if all are shown.

        Their order needs every pending job's priority: it comes from the spool's claim index
        (the daemons' own stat-keyed cache of it), so it costs a stat per file, not a parse.
        """
        ids = self.spool.ids(State.PENDING)
        if len(ids) <= count:
            return None
        try:
            return set(self.spool.next_pending(count))
        except OSError:  # e.g. an unreadable index: read the files instead
            priorities = self._pending_priorities(ids)
        first = heapq.nsmallest(count, priorities, key=lambda i: run_order(priorities[i], i))
        return set(first)

    def _pending_priorities(self, ids: list[int]) -> dict[int, int]:
        """Return the priority of each pending job IDS through the facts (and their cache).

        A file that is no valid job comes first, so the table reads it and shows its error.
        """
        folder, out = self.spool.dir(State.PENDING), {}
        for job_id in ids:
            try:
                out[job_id] = self.facts(folder / file_name(job_id), State.PENDING)["priority"]
            except FileNotFoundError:
                continue  # it moved on while we looked
            except ConfigError:
                out[job_id] = UNREADABLE_PRIORITY
        return out

    def view(self, state: str | None = None, *, name: str | None = None,
             fold: bool = False) -> StatusView:
        """Read the records of STATE (None or "all": every state), filtered by NAME (a glob).

        With FOLD (the default table), only the RECENT_FINISHED newest finished jobs and the
        NEXT_PENDING next pending ones are read; the others are counted from the folder
        listings.
        """
        select: Callable[[State, int], bool] | None = None
        most = None  # at most this many files are read, if known
        if fold and not name:
            recent = set(self.spool.ids(FINISHED)[-RECENT_FINISHED:])
            nxt = self.next_pending()
            self._shown = FINISHED if nxt is None else FINISHED | {State.PENDING}

            def select(st: State, job_id: int) -> bool:
                if st in FINISHED:
                    return job_id in recent
                return st is not State.PENDING or nxt is None or job_id in nxt

            most = RECENT_FINISHED + NEXT_PENDING + len(self.spool.ids(State.RUNNING))
        states = list(State) if state in (None, "all") else [State(state)]
        for st in states:
            self._cache(st)  # so that a folder emptied since the last run saves an empty cache
        if most is None or self.pool_min is None or most >= self.pool_min:
            self._read_ahead(states, select)  # (it would not fork for fewer files)
        scanned = self.spool.scan_with(self.facts, state, select=select)
        self._ahead = {}
        records = []
        for st, path, facts in scanned.found:
            if name and not fnmatchcase(facts["name"], name):
                continue
            progress = self.progress(st, facts["id"]) if needs_progress(st, facts) else None
            records.append(build_record(st, path, facts, progress))
        self._ahead_logs = {}
        folded = {str(st): n for st, n in scanned.skipped.items()}
        if fold and name:  # the whole spool was read to match names: fold as the table did
            folded_view = fold_records(records)
            records, folded = folded_view.records, folded_view.folded
        if not name and state in (None, "all"):
            records.extend(invalid_record(p) for p in scanned.problems)
            records.extend(dropped_record(d) for d in self.spool.dropped())
        for cache in self._caches.values():
            cache.save()
        return StatusView(records, folded)

    def records_of(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Return the records of the jobs IDS (JobNotFound if one is in no folder)."""
        return [job_record(self.spool, self.spool.get(i)) for i in ids]


def _stat(path: Path) -> os.stat_result:
    """Return PATH's stat; NotRegularFile for a broken symbolic link (it is no job)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise NotRegularFile("broken symbolic link", file=path) from None
        raise
