"""What a claim needs of each pending job (priority and `after`), kept cheap and exact.

A claim must order every pending job (priority, then id), so reading and validating each file
on every poll costs a core's fifth over a backlog of 2,000 jobs and seconds over 10,000. The
index keeps, per pending file, (inode, mtime_ns, size) -> (priority, after). It is only a cache:
an entry counts only while the file's stat still matches it and the file is older than
RECENT_S (a file changed within the clock's granularity could keep its stat: git's "racily
clean" problem); anything else is read again. The job a claim picks is always read and
validated in full. `submit` appends what it published to a journal, so the first claim over a
freshly filled queue reads no file but the one it claims. Both files live in tmp/: deleting
them costs one slow claim, nothing else.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ltxq.fsutil import write_atomic
from ltxq.spool.layout import State

if TYPE_CHECKING:
    from ltxq.job import Job
    from ltxq.spool.layout import Layout

INDEX = "claim-index.json"
JOURNAL = "claim-journal"
RECENT_S = 2.0
UNREADABLE_PRIORITY = 10**9  # a file the index cannot read is tried first: the claim judges it


@dataclass(frozen=True)
class Facts:
    """What ordering a pending job needs: its priority and the jobs it waits for."""

    priority: int
    after: tuple[int, ...]


class ClaimIndex:
    """The pending jobs' claim facts, by file name."""

    def __init__(self, spool: Layout):
        self.spool = spool
        self._entries: dict[str, list[Any]] = {}
        self._index_key: tuple[int, int] | None = None
        self._dirty = False

    def record(self, path: Path, job: Job) -> None:
        """Note that JOB was just published at PATH (best effort: a lost line is a miss)."""
        try:
            st = os.stat(path)
            after = ",".join(map(str, job.meta.after)) or "-"
            line = (f"{path.name} {st.st_ino} {st.st_mtime_ns} {st.st_size} "
                    f"{job.meta.priority} {after}\n")
            fd = os.open(self.spool.tmp_dir() / JOURNAL,
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass

    def facts(self, names: dict[str, int]) -> dict[str, Facts]:
        """Return the facts of pending/NAME for each of NAMES (name -> id) still there."""
        self._load()
        folder = os.fsencode(self.spool.dir(State.PENDING))
        recent = time.time_ns() - int(RECENT_S * 1e9)
        out: dict[str, Facts] = {}
        entries = self._entries
        for name in names:
            try:
                st = os.stat(folder + b"/" + name.encode())
            except FileNotFoundError:
                continue
            cached = entries.get(name)
            if (cached is not None and _valid(cached) and cached[0] == st.st_ino
                    and cached[1] == st.st_mtime_ns and cached[2] == st.st_size
                    and st.st_mtime_ns < recent):
                out[name] = Facts(cached[3], tuple(cached[4]))
                continue
            facts = _read_facts(self.spool.dir(State.PENDING) / name)
            out[name] = facts
            if st.st_mtime_ns < recent:
                entries[name] = [st.st_ino, st.st_mtime_ns, st.st_size, facts.priority,
                                 list(facts.after)]
                self._dirty = True
        if len(entries) > len(out):
            for gone in set(entries) - set(out):
                del entries[gone]
            self._dirty = True
        self._save()
        return out

    def _tmp(self) -> Path:
        return self.spool.path / "tmp"  # made again only where we write (a reader may not)

    def _load(self) -> None:
        """Read the index file if it changed since we last did, then fold the journal in.
        Entries are checked when used, not here: most are never looked at twice."""
        path = self._tmp() / INDEX
        try:
            st = os.stat(path)
            if self._index_key != (st.st_ino, st.st_mtime_ns):
                doc = json.loads(path.read_bytes())
                self._entries = doc if isinstance(doc, dict) else {}
                self._index_key = (st.st_ino, st.st_mtime_ns)
        except (OSError, ValueError):
            pass
        self._take_journal()

    def _take_journal(self) -> None:
        journal = self._tmp() / JOURNAL
        taken = self._tmp() / f"{JOURNAL}.{os.getpid()}"
        try:
            os.rename(journal, taken)  # appenders that still hold the old file only add misses
        except FileNotFoundError:
            return
        except OSError:  # a spool this user cannot write: read the journal, leave it there
            taken = journal
        try:
            for line in taken.read_text().splitlines():
                try:  # NAME INODE MTIME_NS SIZE PRIORITY AFTER (comma-separated ids, or -)
                    name, ino, mtime, size, priority, after = line.split(" ")
                    self._entries[name] = [int(ino), int(mtime), int(size), int(priority),
                                           [] if after == "-" else list(map(int, after.split(",")))]
                except ValueError:
                    continue  # a torn line: that file is read instead
                self._dirty = True
        except OSError:
            pass
        finally:
            if taken != journal:
                taken.unlink(missing_ok=True)

    def _save(self) -> None:
        if not self._dirty:
            return
        path = self._tmp() / INDEX
        try:
            write_atomic(path, json.dumps(self._entries), self._tmp(), durable=False)
            st = os.stat(path)
            self._index_key = (st.st_ino, st.st_mtime_ns)
        except OSError:
            return
        self._dirty = False


def _valid(entry: Any) -> bool:
    # Exact types, no generators: status checks every entry of a 10,000-job pending/.
    if type(entry) is not list or len(entry) != 5:
        return False
    ino, mtime, size, priority, after = entry
    return (type(ino) is int and type(mtime) is int and type(size) is int
            and type(priority) is int and type(after) is list
            and (not after or all(type(v) is int for v in after)))


def _read_facts(path: Path) -> Facts:
    """Read priority and after from PATH without validating the rest (the claim will)."""
    try:
        from ltxq.fsutil import read_regular
        from ltxq.job import load_toml

        doc = load_toml(read_regular(path)[1], file=path)
        meta = doc.get("job", {})
        priority = meta.get("priority", 0)
        after = meta.get("after", [])
        if (isinstance(priority, int) and not isinstance(priority, bool)
                and isinstance(after, list) and all(isinstance(a, int) for a in after)):
            return Facts(priority, tuple(after))
    except Exception:  # noqa: BLE001 - whatever is wrong with it, the claim judges the file
        pass
    return Facts(UNREADABLE_PRIORITY, ())
