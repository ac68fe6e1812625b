"""Wake an idle daemon when the spool changes: inotify on the folders whose changes can make a
job claimable (or a cancel relayable), with the poll interval as the fallback.

Watched: pending/ (a submit, an adoption, a hand-dropped file written or renamed in), control/
(pause, unpause, cancel), and done/, failed/, cancelled/ (a parent finished elsewhere, so its
dependents can run). Only arrivals and removals count, never reads or the daemon's own log
writes; each of the daemon's own moves into a watched folder wakes it at most once. On NFS and
other filesystems without inotify events from other hosts, the poll interval still applies.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

WATCHED = ("pending", "control", "done", "failed", "cancelled")


class Waker:
    """A select()-able sleep that ends early on a signal (wakeup socket) or a spool change."""

    def __init__(self, signal_socket: socket.socket | None = None):
        self._signal = signal_socket
        self._inotify = None

    def watch(self, folders: Iterable[Path]) -> bool:
        """Watch FOLDERS for arrivals and removals; return False where inotify is unavailable."""
        if not sys.platform.startswith("linux"):
            return False
        try:
            from inotify_simple import INotify, flags
        except ImportError:
            return False
        # Arrivals (a rename in, a file written and closed) and deletions (unpause); not
        # MOVED_FROM, so the daemon's own claims out of pending/ do not wake it.
        mask = flags.CLOSE_WRITE | flags.MOVED_TO | flags.DELETE
        try:
            inotify = INotify(nonblocking=True)
            for folder in folders:
                inotify.add_watch(os.fspath(folder), mask)
        except OSError:
            return False  # out of watches or instances: polling still works
        self._inotify = inotify
        return True

    def sleep(self, seconds: float) -> bool:
        """Sleep up to SECONDS; return True if a signal or a spool change ended it early."""
        sources = [s for s in (self._signal, self._inotify) if s is not None]
        if not sources:
            select.select([], [], [], seconds)
            return False
        ready, _, _ = select.select(sources, [], [], seconds)
        self.drain()
        return bool(ready)

    def drain(self) -> None:
        """Forget the events seen so far (they were acted on by the pass that follows)."""
        if self._signal is not None:
            try:
                while self._signal.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        if self._inotify is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._inotify.read(timeout=0)

    def close(self) -> None:
        """Stop watching."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
