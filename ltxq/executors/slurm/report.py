"""What a Slurm job reported, read back by the daemon: the node's result line and job log.

The node never writes the job file, so the daemon records step, checkpoint and validation
sample from here when it settles the job: from the `ltxq-result` line when there is one (the
trainer's own TrainResult), else from the newest such lines of the job log.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ltxq.job import JobMeta
from ltxq.progress import last_progress

_REPORTED = re.compile(r" (?P<kind>checkpoint|sample) step \d+: (?P<path>.+)$")


def read_text(path: Path) -> str:
    """Return the text of PATH ("" if it cannot be read)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def log_report(log: Path) -> dict[str, Any]:
    """Return the newest step, checkpoint and validation_sample found in job log LOG."""
    found: dict[str, Any] = {}
    progress = last_progress(log)
    if progress is not None:
        found["step"] = progress.step
    try:
        with open(log, encoding="utf-8", errors="replace") as lines:
            for line in lines:  # once per settled job: a whole read is fine
                m = _REPORTED.search(line.rstrip("\n"))
                if m:
                    key = "checkpoint" if m["kind"] == "checkpoint" else "validation_sample"
                    found[key] = m["path"]
    except OSError:
        pass
    return found


class LogFollower:
    """Reads a running job's log as it grows (from the last offset), so the owning daemon can
    record the node's checkpoints and samples in the job file while the Slurm job runs."""

    def __init__(self, log: Path):
        self.log = log
        self._offset = 0
        self._partial = b""

    def news(self) -> dict[str, str]:
        """Return the newest checkpoint / validation_sample reported since the last call."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                data = self._partial + f.read()
                self._offset = f.tell()
        except OSError:
            return {}
        lines = data.split(b"\n")
        self._partial = lines.pop()  # a line still being written
        found: dict[str, str] = {}
        for raw in lines:
            m = _REPORTED.search(raw.decode("utf-8", "replace"))
            if m:
                key = "checkpoint" if m["kind"] == "checkpoint" else "validation_sample"
                found[key] = m["path"]
        return found


def result_changes(doc: dict[str, Any] | None, log: dict[str, Any],
                   meta: JobMeta) -> dict[str, Any]:
    """Return the [job] fields to record: the result line's values, else the log's."""
    changes: dict[str, Any] = {"step": log.get("step", meta.step)}
    for key in ("checkpoint", "validation_sample"):
        if log.get(key):
            changes[key] = str(log[key])
    if doc:
        if isinstance(doc.get("step"), int):
            changes["step"] = doc["step"]
        for key in ("checkpoint", "validation_sample"):
            if doc.get(key):
                changes[key] = str(doc[key])
        peak = doc.get("peak_memory_gib")
        if isinstance(peak, (int, float)) and not isinstance(peak, bool) and 0 <= peak <= 1e6:
            changes["peak_memory_gib"] = float(peak)
    return changes
