"""Tables from status records (ltxq.status.reader reads them; `--json` prints them as they are)."""

from __future__ import annotations

import json
from typing import Any

from ltxq.progress import format_duration
from ltxq.spool import State

WIDTH = 80


def json_array(records: list[dict[str, Any]]) -> str:
    """Return RECORDS as a JSON array, one record per line.

    json.dumps(indent=2) runs the pure-Python encoder: over 10,000 records it took longer
    than reading the spool. One compact line per record takes the C encoder, and a line per
    job still reads (and greps) well.
    """
    if not records:
        return "[]"
    return "[\n" + ",\n".join("  " + json.dumps(r) for r in records) + "\n]"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def progress_cell(step: int | None, total: int | None, width: int = 22) -> str:
    """Return "[#####---] 12/20" in WIDTH characters (the bar shrinks to fit the numbers)."""
    if step is None:
        return ""
    if total is None:  # a caption or preprocess job whose total no progress line gave yet
        return str(step)
    numbers = f"{step}/{total}"
    bar_width = width - len(f"{total}/{total}") - 3  # same bar width for every step of a job
    if bar_width < 4:
        return numbers
    filled = int(bar_width * min(step, total) / total) if total else 0
    return f"[{'#' * filled}{'-' * (bar_width - filled)}] {numbers}"


_HEAD = f"{'ID':>5} {'STATE':<9} {'NAME':<16} {'PRI':>4} {'PROGRESS':<22} {'LOSS':>7} {'ETA':>8}"


def _row(r: dict[str, Any]) -> list[str]:
    loss = f"{r['loss']:.4f}" if isinstance(r.get("loss"), float) else ""
    eta = format_duration(r["eta_seconds"]) if r.get("eta_seconds") is not None else ""
    if r["state"] == "pending" and r["after"]:
        eta = "after " + ",".join(str(a) for a in r["after"])
    name = r["name"] or "-"
    if r.get("kind", "train") != "train":  # mark the other kinds: "caption: cakes"
        name = f"{r['kind']}: {name}"
    line = (f"{r['id']:>5} {r['state']:<9} {_cut(name, 16):<16} {r['priority']:>4} "
            f"{progress_cell(r['step'], r['total_steps']):<22} {loss:>7} {eta:>8}")
    rows = [line.rstrip()]
    if r.get("error"):
        rows.append(_cut(f"{'':>5} error: {r['error']}", WIDTH))
    elif r["state"] == "running" and r.get("slurm_job_id"):
        rows.append(_cut(f"{'':>5} Slurm job {r['slurm_job_id']} (via {r.get('worker') or '-'})",
                         WIDTH))
    elif r["state"] == "running" and r.get("worker"):
        rows.append(_cut(f"{'':>5} on {r['worker']}" + (f" ({r['device']})" if r['device'] else ""),
                         WIDTH))
    return rows


def status_table(records: list[dict[str, Any]], *, paused: bool = False,
                 folded: dict[str, int] | None = None) -> str:
    """Render status records as a table that fits 80 columns.

    FOLDED counts, by state, the jobs not shown (older finished ones, pending ones that run
    later: ltxq.status.records folds them). Invalid and dropped files follow the table.
    """
    jobs = [r for r in records if r["state"] not in _FILES]
    invalid = [r for r in records if r["state"] == "invalid"]
    dropped = [r for r in records if r["state"] == "dropped"]
    hidden = {s: n for s, n in (folded or {}).items() if n}
    lines = []
    if paused:
        lines.append("queue paused: daemons claim no new jobs (ltxq unpause to resume)")
    if jobs:
        lines.append(_HEAD)
        for r in jobs:
            lines.extend(_row(r))
    elif not invalid and not dropped and not hidden:
        lines.append("no jobs")
    lines.extend(_folded_lines(hidden))
    counts = dict(hidden)
    for r in records:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    if jobs or hidden:
        order = [str(s) for s in State] + list(_FILES)
        lines.append(", ".join(f"{counts[s]} {s}" for s in order if s in counts))
    for r in invalid:
        lines.append(_cut(f"invalid {r['file']} (from {r['origin']}): {r['error']}", 2 * WIDTH))
    if dropped:
        lines.append("Not adopted yet:")
        lines.extend(_cut(f"  {r['file']}: {r['reason']}", 2 * WIDTH) for r in dropped)
    return "\n".join(lines)


_FILES = ("invalid", "dropped")  # records of files that are no jobs (yet)


def _folded_lines(hidden: dict[str, int]) -> list[str]:
    """Return the summary lines of the jobs the table does not show."""
    lines = []
    pending = hidden.get("pending", 0)
    if pending:
        lines.append(f"  ... and {pending:,} more pending (--all shows every job)")
    finished = {s: n for s, n in hidden.items() if s != "pending"}
    if finished:
        parts = ", ".join(f"{n:,} {s}" for s, n in sorted(finished.items()))
        lines.append(f"  ... and {sum(finished.values()):,} older finished jobs ({parts}); "
                     "--all lists them")
    return lines


def workers_table(workers: list[dict[str, Any]]) -> str:
    """Render live daemons: worker, device, job, step."""
    if not workers:
        return "no live daemons"
    lines = [f"{'WORKER':<28} {'DEVICE':<10} {'JOB':>5} {'STEP':<12} SINCE"]
    for w in workers:
        job = str(w["job"]) if w.get("job") is not None else "-"
        step = f"{w['step']}/{w['total_steps']}" if w.get("step") is not None else "-"
        device = "slurm" if w.get("executor") == "slurm" else w.get("device") or "auto"
        lines.append(f"{_cut(w['worker'], 28):<28} {device:<10} {job:>5} "
                     f"{step:<12} {w.get('started_at', '')[:19]}")
        for job_id, slurm_id in (w.get("jobs") or {}).items():
            lines.append(f"{'':<28} {'':<10} {job_id:>5} Slurm job {slurm_id}")
    return "\n".join(lines)
