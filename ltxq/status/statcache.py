"""A cache of facts derived from files, trusted only while a file's stat key is unchanged.

`status` over thousands of jobs would otherwise parse and validate every job file on every run.
This is only a cache, never a source of truth: each value is stored under its file's
(inode, mtime_ns, size) and a lookup whose key differs is a miss, so the caller reads the file
again. Published files are replaced by rename (a new inode), logs only grow (a new size).
A file changed in the last SETTLE seconds is never stored: within one tick of a coarse clock a
rewrite could keep its key (git's "racily clean" index entries), so recent files are always read.

One JSON file per folder, replaced atomically after a pass over the whole folder with only the
entries looked up in it, so files that left the folder leave the cache too. An
unreadable, foreign or unwritable cache is an empty one: status then reads every file.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ltxq.fsutil import write_atomic

SETTLE_SECONDS = 2.0
MISSING: Any = object()  # what `get` returns on a miss (None is a value one may store)


def stat_key(st: os.stat_result) -> list[int]:
    """Return the key that changes whenever the file's content can have changed."""
    return [st.st_ino, st.st_mtime_ns, st.st_size]


class StatCache:
    """Values keyed by file name and stat key, loaded from and saved to one JSON file."""

    def __init__(self, path: Path, tmp_dir: Path, version: str, *,
                 settle: float = SETTLE_SECONDS, clock: float | None = None):
        self.path = path
        self.tmp_dir = tmp_dir
        self.version = version  # what the values mean; a cache of another version is ignored
        self.cutoff_ns = int(((clock if clock is not None else time.time()) - settle) * 1e9)
        self._old: dict[str, list[Any]] = {}
        self._new: dict[str, list[Any]] = {}
        self._changed = False
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return
        if isinstance(doc, dict) and doc.get("version") == self.version \
                and isinstance(doc.get("entries"), dict):
            self._old = doc["entries"]

    def get(self, name: str, st: os.stat_result) -> Any:
        """Return the value stored for NAME under ST's key, or MISSING."""
        item = self._old.get(name)
        try:
            if item is None or item[0] != stat_key(st):
                return MISSING
        except (TypeError, IndexError, KeyError):
            return MISSING  # not what this module writes: a miss, like any other
        self._new[name] = item
        return item[1]

    def stored(self, name: str) -> bool:
        """Return True if the loaded cache has an entry for NAME (of any key)."""
        return name in self._old

    def put(self, name: str, st: os.stat_result, value: Any) -> None:
        """Store VALUE (JSON data) for NAME, read from the file when its stat was ST."""
        self.put_keyed(name, stat_key(st), value)

    def put_keyed(self, name: str, key: list[int], value: Any) -> None:
        """Like `put`, with the file's `stat_key` in place of its stat."""
        if key[1] < self.cutoff_ns:  # its mtime_ns
            self._new[name] = [key, value]
            self._changed = True

    def save(self) -> None:
        """Write this run's entries if they differ from the loaded ones; never fail.

        Only the entries looked up in this run are kept, so files that left the folder leave the
        cache: the caller must have looked up every file of the folder.
        """
        if not self._changed and len(self._new) == len(self._old):
            return
        data = json.dumps({"version": self.version, "entries": self._new},
                          separators=(",", ":"))
        with contextlib.suppress(OSError):  # a read-only or full spool: status works without it
            write_atomic(self.path, data, self.tmp_dir, durable=False)
