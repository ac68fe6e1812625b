"""The job log's line format: written by the daemon, read back from the file's tail by `status`.

A log line is `YYYY-mm-dd HH:MM:SS message` (local time). A progress line's message is fixed:

    step 12/20 loss 0.4123 lr 2.00e-04 0.031 s/step eta 0:00:04

so `tail -f` reads well and `status` finds the newest one in the last few KB of the file.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 8192  # progress is throttled to ~1 line/s, so the newest one is always near the end

_PROGRESS = re.compile(
    r" step (?P<step>\d+)/(?P<total>\d+) loss (?P<loss>\S+) lr (?P<lr>\S+)"
    r" (?P<sps>[\d.]+) s/step eta (?P<eta>\d+:\d\d:\d\d)$")


@dataclass(frozen=True)
class Progress:
    """The newest progress line of a job log."""

    step: int
    total: int
    loss: float | None
    lr: float | None
    seconds_per_step: float
    eta_seconds: int


def stamp(message: str, at: float | None = None) -> str:
    """Return MESSAGE as one log line (with its newline), time-stamped in local time."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    flat = message.replace("\n", " | ")  # one event, one line: `tail`/`grep` friendly
    return f"{when} {flat}\n"


def format_duration(seconds: float) -> str:
    """Return SECONDS as H:MM:SS."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def parse_duration(text: str) -> int:
    """Return the seconds of an H:MM:SS text."""
    h, m, s = (int(p) for p in text.split(":"))
    return h * 3600 + m * 60 + s


def progress_message(step: int, total: int, loss: float, lr: float,
                     seconds_per_step: float) -> str:
    """Return the fixed-form progress message (without the time stamp)."""
    eta = (total - step) * seconds_per_step
    return (f"step {step}/{total} loss {loss:.4f} lr {lr:.2e} {seconds_per_step:.3f} s/step"
            f" eta {format_duration(eta)}")


def read_tail(path: Path, size: int = TAIL_BYTES) -> str:
    """Return the last SIZE bytes of PATH as text ("" if it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return ""
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        start = max(0, end - size)
        data = os.pread(fd, end - start, start)
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    return text if start == 0 else text.partition("\n")[2]  # drop the cut first line


def last_progress(path: Path) -> Progress | None:
    """Return the newest progress line of the log at PATH, or None."""
    for line in reversed(read_tail(path).splitlines()):
        m = _PROGRESS.search(line)
        if m:
            return Progress(step=int(m["step"]), total=int(m["total"]),
                            loss=_float(m["loss"]), lr=_float(m["lr"]),
                            seconds_per_step=float(m["sps"]),
                            eta_seconds=parse_duration(m["eta"]))
    return None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
