"""Is a running job's owner alive? The lock is the first witness; the owner's process the second.

A held `locks/<id>.lock` means a live owner. But a lock file can be deleted (`rm -rf
spool/locks`): the next process then takes a *fresh* lock and would think the owner dead. So the
owner also records who it is in the job file — `worker = "host:pid"` and `worker_start`, the
boot id and the process's start time — and nothing on the same host recovers a job whose
recorded process still runs. (On another host only the lock can tell: README warns.)
"""

from __future__ import annotations

import os
from functools import cache


@cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """Return "BOOT_ID:START_TICKS" of process PID, or None if it is gone (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return f"{_boot_id()}:{int(fields[19])}"
    except (IndexError, ValueError):
        return None


def this_process() -> str | None:
    """Return the liveness witness of this process (recorded as [job].worker_start)."""
    return process_start(os.getpid())


def owner_alive(worker: str | None, worker_start: str | None) -> bool:
    """Return True if WORKER ("host:pid") is a process on this host that still runs and started
    at WORKER_START; False if it is gone or cannot be checked from here."""
    if not worker or not worker_start:
        return False
    host, _, pid = worker.rpartition(":")
    import socket  # (a few ms every status would pay)

    if host != socket.gethostname() or not pid.isdigit():
        return False
    return process_start(int(pid)) == worker_start
