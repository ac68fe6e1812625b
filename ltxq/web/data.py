"""What the pages show, computed from the spool and the job's output folder (no job state kept).

Records come from ltxq.status (the same as `status --json`); curves from metrics.jsonl read by
byte offset and downsampled here; files are resolved only from (job id, kind, name).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from ltxq.errors import JobNotFound, LtxqError
from ltxq.metrics import METRICS, SAMPLES, read_lines
from ltxq.spool import Spool
from ltxq.status import StatusReader, StatusView

MAX_POINTS = 2000  # points per curve sent to a page; longer runs are downsampled
LOG_TAIL_BYTES = 64 * 1024
FILE_KINDS = {"samples": "samples", "checkpoints": "checkpoints", "lora": ""}
LORA_SUFFIXES = (".safetensors", ".toml", ".json", ".jsonl", ".txt")
_SAMPLE = re.compile(r"step_(\d+)_(\d+)\.mp4")
_SAFE_PART = re.compile(r"[^/\\\x00]+")


def queue_view(spool: Spool, state: str | None, name: str | None) -> StatusView:
    """Return the queue page's records: like `status` (folded unless a state is chosen)."""
    return StatusReader(spool).view(state, name=name or None, fold=state in (None, ""))


def state_page(spool: Spool, state: str, page: int, rows: int,
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int], int]:
    """Return one page of STATE's jobs (newest first), problem files, counts and page count.

    Only the page's job files are read: the folder listings give the ids and the counts, so
    a page of a 10,000-job spool costs what a page of a small one does.
    """
    from ltxq.spool import State
    from ltxq.status.records import dropped_record, invalid_record

    chosen = list(State) if state == "all" else [State(state)]
    found = sorted(((job_id, st) for st in chosen for job_id in spool.ids(st)), reverse=True)
    counts: dict[str, int] = {}
    for _, st in found:
        counts[str(st)] = counts.get(str(st), 0) + 1
    pages = max(1, -(-len(found) // rows))
    page = min(max(page, 1), pages)
    reader = StatusReader(spool)
    records = []
    for job_id, _ in found[(page - 1) * rows:page * rows]:
        with contextlib.suppress(LtxqError):  # moved on, cleared, or not a valid job now
            records.extend(reader.records_of([job_id]))
    problems = []
    if state == "all":
        problems = ([invalid_record(p) for p in spool.invalid()]
                    + [dropped_record(d) for d in spool.dropped()])
    return records, problems, counts, pages


def all_records(spool: Spool) -> list[dict[str, Any]]:
    """Return every record, as `status --json` prints them."""
    return StatusReader(spool).view(None).records


def job_record(spool: Spool, job_id: int) -> dict[str, Any]:
    """Return the record of one job (JobNotFound if none)."""
    return StatusReader(spool).records_of([job_id])[0]


def output_dir(spool: Spool, job_id: int) -> Path:
    """Return the output folder the job file names."""
    return spool.get(job_id).job.output_dir()


def downsample(rows: list[dict[str, Any]], limit: int = MAX_POINTS) -> list[dict[str, Any]]:
    """Keep at most LIMIT rows, evenly spaced, always the last."""
    if len(rows) <= limit:
        return rows
    stride = len(rows) / limit
    picked = [rows[int(i * stride)] for i in range(limit - 1)]
    return [*picked, rows[-1]]


def metrics(folder: Path, offset: int = 0) -> dict[str, Any]:
    """Return the curves after byte OFFSET of metrics.jsonl (uPlot columns) and the new offset."""
    rows, end = read_lines(folder / METRICS, offset)
    rows = downsample([r for r in rows if isinstance(r.get("step"), int)])
    return {"offset": end, "step": [r["step"] for r in rows],
            "loss": [r.get("loss") for r in rows], "lr": [r.get("lr") for r in rows],
            "grad_norm": [r.get("grad_norm") for r in rows]}


def samples(folder: Path) -> dict[str, Any]:
    """Return the validation videos as a grid: steps (rows), prompts (columns), names."""
    records, _ = read_lines(folder / SAMPLES, 0)
    prompts: dict[int, str] = {}
    grid: dict[int, dict[int, str]] = {}
    for r in records:
        name = Path(str(r.get("path", ""))).name
        if not _SAMPLE.fullmatch(name):
            continue
        prompts[int(r.get("prompt_index", 0))] = str(r.get("prompt", ""))
        grid.setdefault(int(r["step"]), {})[int(r.get("prompt_index", 0))] = name
    # Videos written before metrics existed (or by a run without samples.jsonl) count too.
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder / "samples"):
            m = _SAMPLE.fullmatch(entry.name)
            if m:
                grid.setdefault(int(m[1]), {}).setdefault(int(m[2]), entry.name)
                prompts.setdefault(int(m[2]), "")
    return {"prompts": [prompts[i] for i in sorted(prompts)], "indexes": sorted(prompts),
            "rows": [(step, grid[step]) for step in sorted(grid)]}


def checkpoints(folder: Path) -> list[dict[str, Any]]:
    """List the checkpoint folders with their files."""
    out = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(os.scandir(folder / "checkpoints"), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and entry.name.startswith("step_"):
                files = sorted(f.name for f in os.scandir(entry.path)
                               if f.is_file(follow_symlinks=False))
                out.append({"name": entry.name, "files": files})
    return out


def downloads(folder: Path) -> list[str]:
    """List the top-level files a person downloads: the LoRA, its ComfyUI copy, config.toml."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return sorted(e.name for e in os.scandir(folder)
                      if e.is_file(follow_symlinks=False) and e.name.endswith(LORA_SUFFIXES)
                      and not e.name.startswith("."))
    return []


def resolve_file(folder: Path, kind: str, name: str) -> Path | None:
    """Return the file NAME of KIND in the output FOLDER, or None (a refusal: 404).

    NAME is one or more plain parts (checkpoints: folder/file; others: one part); `..`,
    absolute names and anything that resolves outside the kind's folder are refused.
    """
    sub = FILE_KINDS.get(kind)
    if sub is None:
        return None
    parts = name.split("/")
    if len(parts) > (2 if kind == "checkpoints" else 1):
        return None
    if any(p in ("", ".", "..") or not _SAFE_PART.fullmatch(p) for p in parts):
        return None
    base = (folder / sub) if sub else folder
    try:
        real_base = base.resolve(strict=True)
        target = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(real_base) or not target.is_file():
        return None
    if kind == "lora" and not target.name.endswith(LORA_SUFFIXES):
        return None
    return target


def log_tail(spool: Spool, job_id: int, offset: int | None = None) -> tuple[str, int]:
    """Return the log after byte OFFSET (None: its last LOG_TAIL_BYTES) and the new offset."""
    path = spool.log_path(job_id)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - LOG_TAIL_BYTES) if offset is None else min(offset, size)
            f.seek(start)
            data = f.read(size - start)
    except FileNotFoundError:
        return "", 0
    if offset is None and start > 0:
        data = data[data.find(b"\n") + 1:]
    return data.decode("utf-8", errors="replace"), start + len(data) if offset is not None \
        else size


def flat_config(spool: Spool, job_id: int) -> dict[str, Any]:
    """Return a job file's training keys flattened (section.key -> value), [job] left out.

    From the job `spool.get` already read and validated (its sections as written, paths made
    absolute), not a second, unguarded read of the file.
    """
    flat: dict[str, Any] = {}
    for section, table in spool.get(job_id).job.raw.items():
        if not isinstance(table, dict):
            continue
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    return flat


def compare(spool: Spool, ids: list[int]) -> dict[str, Any]:
    """Return what the compare page shows for the jobs IDS (JobNotFound if one is missing)."""
    configs = {i: flat_config(spool, i) for i in ids}
    keys = sorted(set().union(*configs.values())) if configs else []
    differ = [(k, [configs[i].get(k, "") for i in ids]) for k in keys
              if len({repr(configs[i].get(k)) for i in ids}) > 1]
    folders = {i: output_dir(spool, i) for i in ids}
    grids = {i: samples(folders[i]) for i in ids}
    cells: dict[tuple[int, int], dict[int, str]] = {}
    prompts: dict[int, str] = {}
    for i in ids:
        for idx, prompt in zip(grids[i]["indexes"], grids[i]["prompts"], strict=True):
            prompts.setdefault(idx, prompt)
        for step, row in grids[i]["rows"]:
            for idx, name in row.items():
                cells.setdefault((step, idx), {})[i] = name
    rows = [(step, idx, prompts.get(idx, ""), cells[(step, idx)])
            for step, idx in sorted(cells, reverse=True)][:24]
    return {"ids": ids, "differ": differ, "rows": rows}


def parse_ids(text: str) -> list[int]:
    """Parse `1,2,3` into ids (LtxqError on anything else); at most 12."""
    ids = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        if not part.isdigit() or len(part) > 9:
            raise LtxqError(f"not a job id: {part!r}")
        ids.append(int(part))
    if not ids:
        raise LtxqError("give job ids: /compare?jobs=1,2,3")
    if len(ids) > 12:
        raise LtxqError("compare at most 12 jobs")
    return list(dict.fromkeys(ids))


__all__ = ["JobNotFound", "compare", "metrics", "queue_view", "resolve_file", "samples"]
