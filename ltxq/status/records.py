"""Status records: what `status --json` prints, one per job file, invalid or dropped file.

A record joins what the job file says (its facts) with the newest progress line of its log.
These functions compute records from data already read; ltxq.status.reader reads the spool
(through the caches) and ltxq.status.render draws the table. `fold_records` is the table's
summary of
a long spool: the newest finished jobs and the next pending ones to run, the rest counted.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

from ltxq.job import Job
from ltxq.progress import Progress, last_progress
from ltxq.spool import FINISHED, Dropped, Entry, Invalid, Spool, State, run_order

RECENT_FINISHED = 10  # finished jobs the default table shows before folding the rest
NEXT_PENDING = 20  # pending jobs (the next to run) the default table shows before folding
_FINISHED_NAMES = frozenset(str(s) for s in FINISHED)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def job_facts(job: Job) -> dict[str, Any]:
    """Return what a record takes from the job file, as JSON data (what the cache keeps)."""
    meta, config = job.meta, job.config
    return {
        "id": job.id, "kind": job.kind, "name": meta.name, "dataset": config.data.dataset,
        "model": config.model.source, "priority": meta.priority, "attempts": meta.attempts,
        "max_attempts": meta.max_attempts, "after": list(meta.after),
        "submitted_at": _iso(meta.submitted_at), "started_at": _iso(meta.started_at),
        "finished_at": _iso(meta.finished_at), "worker": meta.worker, "device": meta.device,
        "slurm_job_id": meta.slurm_job_id, "step": meta.step,
        # Another kind's total (clips, files) is known once it runs: its progress line says.
        "total_steps": config.optimization.steps if job.kind == "train" else None,
        "output_dir": meta.output_dir or str(job.output_dir()),  # (a Path costs, at 10,000)
        "checkpoint": meta.checkpoint, "validation_sample": meta.validation_sample,
        "peak_memory_gib": meta.peak_memory_gib, "error": meta.error,
    }


def needs_progress(state: State, facts: dict[str, Any]) -> bool:
    """Return True if the job's log can hold progress (it has run, or runs now)."""
    return state is State.RUNNING or facts["started_at"] is not None


def build_record(state: State, path: Path, facts: dict[str, Any],
                 progress: Progress | None) -> dict[str, Any]:
    """Return the status record of one job (the `status --json` object)."""
    running = state is State.RUNNING
    kind = facts.get("kind", "train")  # facts cached before job kinds have none
    total = facts["total_steps"]
    if total is None and progress:
        total = progress.total
    trains = kind == "train"  # only training has a loss and a learning rate
    if running and progress:
        step = progress.step
    else:
        step = facts["step"] if facts["step"] is not None else (
            progress.step if progress else None)
    return {
        "id": facts["id"],
        "state": str(state),
        "kind": kind,
        "name": facts["name"],
        "dataset": facts["dataset"],
        "model": facts["model"],
        "priority": facts["priority"],
        "attempts": facts["attempts"],
        "max_attempts": facts["max_attempts"],
        "after": list(facts["after"]),
        "submitted_at": facts["submitted_at"],
        "started_at": facts["started_at"],
        "finished_at": facts["finished_at"],
        "worker": facts["worker"],
        "device": facts["device"],
        "slurm_job_id": facts["slurm_job_id"],
        "step": step,
        "total_steps": total,
        "loss": progress.loss if progress and trains else None,
        "learning_rate": progress.lr if progress and trains else None,
        "seconds_per_step": progress.seconds_per_step if progress and running else None,
        "eta_seconds": progress.eta_seconds if progress and running else None,
        "output_dir": facts["output_dir"],
        "checkpoint": facts["checkpoint"],
        "validation_sample": facts["validation_sample"],
        "peak_memory_gib": facts.get("peak_memory_gib"),  # facts cached before it have none
        "error": facts["error"],
        "file": str(path),
    }


def job_record(spool: Spool, entry: Entry) -> dict[str, Any]:
    """Return the status record of a job already read (no cache)."""
    facts = job_facts(entry.job)
    progress = (last_progress(spool.log_path(entry.id))
                if needs_progress(entry.state, facts) else None)
    return build_record(entry.state, entry.path, facts, progress)


def invalid_record(item: Invalid) -> dict[str, Any]:
    """Return the status record of a file that is not a valid job."""
    return {"id": None, "state": "invalid", "name": item.path.name, "file": str(item.path),
            "origin": item.origin, "error": item.error}


def dropped_record(item: Dropped) -> dict[str, Any]:
    """Return the status record of a pending/ file that is not adopted as a job yet."""
    return {"id": None, "state": "dropped", "name": item.name, "file": str(item.path),
            "reason": item.reason}


@dataclasses.dataclass
class StatusView:
    """What `status` shows: records (jobs by id, then problem files) and folded counts."""

    records: list[dict[str, Any]]
    folded: dict[str, int]


def fold_records(records: list[dict[str, Any]]) -> StatusView:
    """Keep the RECENT_FINISHED newest finished and NEXT_PENDING next pending records.

    The others are counted by state in `folded`; problem files are always kept.
    """
    finished = [r["id"] for r in records if r["state"] in _FINISHED_NAMES]
    old = set(finished[:-RECENT_FINISHED]) if len(finished) > RECENT_FINISHED else set()
    pending = sorted((r for r in records if r["state"] == "pending"),
                     key=lambda r: run_order(r["priority"], r["id"]))
    later = {r["id"] for r in pending[NEXT_PENDING:]}
    folded: dict[str, int] = {}
    kept = []
    for r in records:
        if r["id"] is not None and (r["id"] in old or r["id"] in later):
            folded[r["state"]] = folded.get(r["state"], 0) + 1
        else:
            kept.append(r)
    return StatusView(kept, folded)
