"""Output folders record the job that owns them, so a new job never resumes an old job's run.

Job ids restart at 1 in a new spool (`rm -rf spool`), and `lora_r{rank}_job{id}` would then
name an old job's folder: the new job would resume the old run's checkpoints. So every queue
job carries a unique key ([job].key, a uuid4 hex), and its output folder holds OWNER_FILE, a
small JSON record (key, job id, spool, created_at) written once, atomically, before anything
else goes into the folder.

- `pick_output_dir` (at publish) picks a folder that is free or already this job's:
  `lora_r16_job1`, else `lora_r16_job1-2`, `-3`, ...
- `take_output_dir` (when training starts) creates the folder and records the owner, or
  refuses a folder that another key owns.

Folders from before owner files: one without an owner file is adopted when it holds no ltxq
outputs (nothing to lose: empty, or only a config.toml of a run that never got far). One that
holds checkpoints, samples or a final LoRA is adopted only when the job's own recorded
checkpoint lies inside it (the job ran there before this change); otherwise it is refused, as
the leftovers of some other job. Jobs without a key (submitted before keys existed) and
`ltxq train` are never checked: they keep the old behaviour.

No torch here: the spool and the CLI import this module.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ltxq.errors import TrainingError
from ltxq.fsutil import fsync_dir, umask, write_atomic

OWNER_FILE = ".ltxq-job"
# What a run of ltxq leaves in its folder (trainer/loop.py, export.py, validation.py).
_OUTPUTS = ("checkpoints/step_*", "samples/*.mp4", "pytorch_lora_weights*.safetensors")
_MAX_OWNER_BYTES = 64 << 10


def owner_of(folder: Path) -> dict[str, Any] | None:
    """Return FOLDER's owner record, or None if it has none.

    An owner file that cannot be read as a JSON object gives {"key": None, "error": why}:
    owned, by nobody this code can name.
    """
    try:
        with open(folder / OWNER_FILE, "rb") as f:
            data = f.read(_MAX_OWNER_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        return {"key": None, "error": f"unreadable: {e.strerror or e}"}
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        return {"key": None, "error": f"not JSON: {e}"}
    if not isinstance(record, dict):
        return {"key": None, "error": "not a JSON object"}
    return record


def pick_output_dir(preferred: Path, key: str) -> Path:
    """Return PREFERRED if it does not exist or KEY owns it, else the first such PREFERRED-N.

    N counts from 2. Anything at a name (a folder of another job, an unowned folder, a file, a
    broken link) makes it taken. Creates nothing: the trainer takes the folder.
    """
    candidate, n = preferred, 1
    while os.path.lexists(candidate):
        owner = owner_of(candidate) if candidate.is_dir() else None
        if owner is not None and owner.get("key") == key:
            break
        n += 1
        candidate = preferred.with_name(f"{preferred.name}-{n}")
    return candidate


def take_output_dir(folder: Path, key: str, job_id: int | None, *, spool: Path | None = None,
                    recorded_checkpoint: Path | str | None = None) -> None:
    """Create FOLDER and record KEY as its owner, or raise TrainingError if it is not ours.

    Ours: no owner file and no ltxq outputs (or outputs that RECORDED_CHECKPOINT, the job's
    own, lies among), or an owner file with KEY. Nothing is written when it is not ours.
    """
    folder.mkdir(parents=True, exist_ok=True)
    owner = owner_of(folder)
    if owner is None:
        _check_unowned(folder, recorded_checkpoint)
        record = {"key": key, "job_id": job_id, "spool": str(spool) if spool else None,
                  "created_at": datetime.now(UTC).replace(microsecond=0).isoformat()}
        _create(folder / OWNER_FILE, json.dumps(record, indent=2) + "\n")
        owner = owner_of(folder)  # ours, or a racer's that got there first
    if owner is None or owner.get("key") != key:
        raise TrainingError(f"output folder {folder} belongs to another job ({_describe(owner)});"
                            f" refusing to resume into it")


def _check_unowned(folder: Path, recorded_checkpoint: Path | str | None) -> None:
    """Refuse FOLDER (no owner file) if it holds ltxq outputs this job did not record."""
    found = next((p for pattern in _OUTPUTS for p in folder.glob(pattern)), None)
    if found is None:
        return
    if recorded_checkpoint is not None and _inside(Path(recorded_checkpoint), folder):
        return  # this job ran here before owner files existed
    raise TrainingError(
        f"output folder {folder} holds another job's outputs ({found.relative_to(folder)}) and "
        f"no {OWNER_FILE} owner file; refusing to resume into it: move it away, or submit the "
        f"job again (a new job gets a free folder)")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _describe(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "its owner file vanished"
    if owner.get("error"):
        return f"{OWNER_FILE} {owner['error']}"
    return f"key {owner.get('key')}, job {owner.get('job_id')}"


def _create(dest: Path, text: str) -> None:
    """Write DEST whole if it does not exist yet; leave an existing DEST alone.

    Staged next to DEST and published with link(2), which fails if DEST exists: readers
    see no file or the whole file, and of two racers exactly one wins.
    """
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f"{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, dest)
        except FileExistsError:
            return
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # A filesystem without hard links: publish with a rename (the job lock keeps
            # other writers of this folder away, so there is no racer to lose to).
            if not dest.exists():
                write_atomic(dest, text, dest.parent)
            return
        fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
