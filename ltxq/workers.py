"""Live daemons of a spool: each holds `locks/daemon-<host>-<pid>.lock` and keeps a small JSON
info file beside it. A held lock means alive; an info file whose lock is free is left over."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from ltxq.fsutil import Lock, write_atomic
from ltxq.job import now
from ltxq.progress import last_progress
from ltxq.spool import Spool


class Registration:
    """This process's entry in the spool's list of live daemons."""

    def __init__(self, spool: Spool, device: str | None, executor: str = "local"):
        self.spool = spool
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = f"{self.host}:{self.pid}"
        base = spool.dir("locks") / f"daemon-{self.host}-{self.pid}"
        self._lock = Lock(Path(f"{base}.lock"))
        self._info_path = Path(f"{base}.json")
        self._info: dict[str, Any] = {
            "worker": self.name, "host": self.host, "pid": self.pid, "device": device,
            "executor": executor, "started_at": now().isoformat(), "job": None,
        }

    def start(self) -> None:
        """Take the daemon lock and publish the info file."""
        self._lock.acquire(timeout=5)
        self.update()

    def update(self, **changes: Any) -> None:
        """Change fields of the info file (e.g. job=7)."""
        self._info.update(changes)
        if self._lock.replaced():
            # locks/ was emptied by hand: take a lock on the new file, or `workers` and
            # recovery would see this live daemon as gone.
            self._info_path.parent.mkdir(exist_ok=True)
            self._lock.release()
            self._lock.acquire(timeout=5)
        write_atomic(self._info_path, json.dumps(self._info) + "\n", self.spool.dir("tmp"))

    def stop(self) -> None:
        """Remove the info file, then release and remove the lock."""
        self._info_path.unlink(missing_ok=True)
        self._lock.path.unlink(missing_ok=True)
        self._lock.release()


def live_workers(spool: Spool) -> list[dict[str, Any]]:
    """Return the info of every live daemon on SPOOL, with its job's current step."""
    out = []
    locks = spool.dir("locks")
    for name in sorted(os.listdir(locks)):
        if not (name.startswith("daemon-") and name.endswith(".json")):
            continue
        info_path = locks / name
        lock = Lock(locks / f"{name.removesuffix('.json')}.lock")
        if lock.try_acquire():  # nobody holds it: that daemon is gone
            try:
                info_path.unlink(missing_ok=True)
                lock.path.unlink(missing_ok=True)
            finally:
                lock.release()
            continue
        try:
            info = json.loads(info_path.read_text())
        except (FileNotFoundError, ValueError):
            continue  # stopping, or being rewritten
        info["step"] = info["total_steps"] = None
        if info.get("job") is not None:
            progress = last_progress(spool.log_path(int(info["job"])))
            if progress:
                info["step"], info["total_steps"] = progress.step, progress.total
        out.append(info)
    return out
