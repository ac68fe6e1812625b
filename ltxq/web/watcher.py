"""The server's one watcher: notices spool and log changes and pushes them to every open page.

inotify (ltxq.wakeup's library) on the spool's state folders, control/, invalid/ and logs/,
read from the event loop (no thread); where inotify is unavailable, a poll of those folders'
and logs' stat every POLL_S. Changes are coalesced for at most COALESCE_S, then one event goes
to each subscriber: {"queue": true, "jobs": [ids whose logs changed]}. A spool that does not
exist yet is polled until it appears, then watched. A job's log changes on
every step, checkpoint and sample, so a page that follows a job listens for its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from ltxq.spool import Spool, State
from ltxq.spool.layout import job_id_of

# A training job's log changes every step: pages refresh at most this often (issue 13: within 2 s).
COALESCE_S = 0.75
POLL_S = 1.0
FOLDERS = (*(str(s) for s in State), "control", "invalid", "logs")


class Watcher:
    """Fans spool changes out to subscribers (one asyncio.Queue per open page)."""

    def __init__(self, spool: Spool):
        self.spool = spool
        self.subscribers: set[asyncio.Queue] = set()
        self._inotify: Any = None
        self._task: asyncio.Task | None = None
        self._changed_jobs: set[int] = set()
        self._queue_changed = False
        self._flush: asyncio.TimerHandle | None = None

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.subscribers.discard(queue)

    async def start(self) -> None:
        """Start watching (inotify if possible, else polling)."""
        if self._try_inotify():
            asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_inotify)
        else:
            self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _try_inotify(self) -> bool:
        if not sys.platform.startswith("linux") or not self.spool.exists():
            return False
        try:
            from inotify_simple import INotify, flags
        except ImportError:
            return False
        mask = (flags.CLOSE_WRITE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE
                | flags.CREATE | flags.MODIFY)
        try:
            inotify = INotify(nonblocking=True)
            self._wd: dict[int, str] = {}
            for name in FOLDERS:
                folder = self.spool.path / name
                if folder.is_dir():
                    self._wd[inotify.add_watch(os.fspath(folder), mask)] = name
        except OSError:
            return False
        self._inotify = inotify
        return True

    def _on_inotify(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except (BlockingIOError, OSError):
            return
        for event in events:
            folder = self._wd.get(event.wd)
            if folder == "logs":
                job_id = job_id_of(event.name.removesuffix(".log") + ".toml")
                if job_id is not None:
                    self._changed_jobs.add(job_id)
                self._queue_changed = True  # progress shows in the queue too
            elif folder is not None and not event.name.startswith("."):
                self._queue_changed = True
        self._schedule()

    def _schedule(self) -> None:
        if self._flush is None and (self._queue_changed or self._changed_jobs):
            self._flush = asyncio.get_running_loop().call_later(COALESCE_S, self.publish)

    def publish(self) -> None:
        """Send what changed since the last event to every subscriber."""
        self._flush = None
        event = {"queue": self._queue_changed, "jobs": sorted(self._changed_jobs)}
        self._queue_changed, self._changed_jobs = False, set()
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):  # a stuck page misses an update
                queue.put_nowait(event)

    async def _poll(self) -> None:
        seen = self._signature()
        while True:
            await asyncio.sleep(POLL_S)
            if self._inotify is None and self.spool.exists() and self._try_inotify():
                # The spool appeared (the first submit): watch it instead of polling.
                asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_inotify)
                self._queue_changed = True
                self._schedule()
                self._task = None
                return
            now = self._signature()
            if now != seen:
                old_logs = seen.get("logs", {})
                for name, sig in now.get("logs", {}).items():
                    if old_logs.get(name) != sig:
                        job_id = job_id_of(name.removesuffix(".log") + ".toml")
                        if job_id is not None:
                            self._changed_jobs.add(job_id)
                self._queue_changed = True
                seen = now
                self._schedule()

    def _signature(self) -> dict[str, Any]:
        sig: dict[str, Any] = {}
        for name in FOLDERS:
            folder: Path = self.spool.path / name
            try:
                st = folder.stat()
            except FileNotFoundError:
                continue
            sig[name] = (st.st_mtime_ns, st.st_nlink)
        logs: dict[str, tuple[int, int]] = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(self.spool.path / "logs") as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    logs[entry.name] = (st.st_size, st.st_mtime_ns)
        sig["logs"] = logs
        return sig
