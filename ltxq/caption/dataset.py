"""A dataset folder as the captioner sees it: which clips need a caption, and recording one.

Captions are read the way the trainer reads them (`ltxq.trainer.captions`): a clip has a
caption when a table (captions.json / .jsonl / .csv) or its sidecar clip.txt gives it a
non-empty one. A new caption is recorded at once and atomically:

- jsonl: captions.jsonl is rewritten with one more line (staged, fsynced, renamed), under the
  dataset's write lock. Existing lines stay byte for byte; with --override the new line comes
  after the old one, and the reader takes the last.
- txt: clip.txt is written atomically; an old clip.txt it replaces (--override) is first
  appended to .ltxq-caption/replaced.jsonl, so no caption is ever lost.

Several processes may caption one dataset (two daemons, a daemon and `ltxq caption`): each clip
is captioned under its own lock (.ltxq-caption/locks/), and whether it still needs a caption is
decided again once the lock is held, so no clip is captioned twice. An --override run records
the clips it finished in .ltxq-caption/override-<run>.txt, so a rerun after a crash continues
instead of starting over; the record goes when the run completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ltxq.fsutil import Lock, write_atomic
from ltxq.trainer.captions import (
    CAPTION_KEY,
    PATH_KEY,
    load_caption_table,
    media_key,
    sidecar_caption,
)
from ltxq.trainer.media import is_media

STATE_DIR = ".ltxq-caption"   # hidden: the trainer's scan skips it
JSONL = "captions.jsonl"
WRITE_LOCK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Clip:
    key: str        # path relative to the dataset, POSIX (what captions.jsonl names)
    path: Path


def list_clips(dataset: Path) -> list[Clip]:
    """Return DATASET's media files in name order, hidden files and folders left out."""
    paths = (p for p in dataset.rglob("*")
             if p.is_file() and is_media(p)
             and not any(part.startswith(".") for part in p.relative_to(dataset).parts))
    return sorted((Clip(media_key(dataset, p), p) for p in paths), key=lambda c: c.key)


def current_caption(dataset: Path, clip: Clip) -> str | None:
    """Return the caption the trainer would use for CLIP (table first, then clip.txt), or None
    when it has none or an empty one."""
    table, _ = load_caption_table(dataset)
    return _effective(table, clip)


def captioned_keys(dataset: Path, clips: list[Clip]) -> set[str]:
    """Return the keys of CLIPS that already have a non-empty caption in any form."""
    table, _ = load_caption_table(dataset)
    return {c.key for c in clips if _effective(table, c)}


def _effective(table: dict[str, str], clip: Clip) -> str | None:
    caption = table.get(clip.key)
    if caption is None:
        caption = sidecar_caption(clip.path)
    return caption or None


class CaptionStore:
    """Records captions into one dataset folder; safe to share with other processes."""

    def __init__(self, dataset: Path, fmt: str, run_id: str | None = None):
        self.dataset = dataset
        self.format = fmt
        self.state = dataset / STATE_DIR
        self._run_id = run_id

    def _dir(self, name: str) -> Path:
        path = self.state / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def clip_lock(self, clip: Clip, *, wait: float = 0.0) -> Iterator[bool]:
        """Hold CLIP's lock for the block; yield False (holding nothing) if another process has
        it (after waiting up to WAIT seconds)."""
        name = hashlib.sha256(clip.key.encode()).hexdigest()[:24] + ".lock"
        lock = Lock(self._dir("locks") / name)
        got = lock.try_acquire()
        if not got and wait > 0:
            try:
                lock.acquire(timeout=wait)
                got = True
            except TimeoutError:
                got = False
        try:
            yield got
        finally:
            lock.release()

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        lock = Lock(self._dir("locks") / "write.lock")
        lock.acquire(timeout=WRITE_LOCK_TIMEOUT_S)
        try:
            yield
        finally:
            lock.release()

    def record(self, clip: Clip, caption: str) -> Path:
        """Record CLIP's CAPTION atomically; return the file it went into."""
        with self._write_lock():
            if self.format == "txt":
                dest = clip.path.with_suffix(".txt")
                old = sidecar_caption(clip.path) if dest.exists() else None
                if old:
                    self._append_jsonl(self.state / "replaced.jsonl", {
                        PATH_KEY: clip.key, CAPTION_KEY: old, "file": dest.name,
                        "replaced_at": datetime.now(UTC).isoformat(timespec="seconds")})
                write_atomic(dest, caption + "\n", self._dir("tmp"))
            else:
                dest = self.dataset / JSONL
                self._append_jsonl(dest, {PATH_KEY: clip.key, CAPTION_KEY: caption})
            if self._run_id is not None:
                self._append_line(self._override_record(), clip.key)
        return dest

    def _append_jsonl(self, dest: Path, row: dict[str, str]) -> None:
        self._append_line(dest, json.dumps(row, ensure_ascii=False))

    def _append_line(self, dest: Path, line: str) -> None:
        """Rewrite DEST with LINE added (atomically: readers see it whole or not at all)."""
        try:
            data = dest.read_bytes()
        except FileNotFoundError:
            data = b""
        if data and not data.endswith(b"\n"):
            data += b"\n"
        write_atomic(dest, data + line.encode("utf-8") + b"\n", self._dir("tmp"))

    def clean_tmp(self, older_than: float = 600.0) -> None:
        """Remove staging files that writers killed mid-write left behind long ago."""
        import time

        cutoff = time.time() - older_than
        tmp = self.state / "tmp"
        for path in tmp.glob("*.tmp") if tmp.is_dir() else ():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    # --- an --override run's record of the clips it finished ---------------------------

    def _override_record(self) -> Path:
        assert self._run_id is not None
        return self._dir(".") / f"override-{self._run_id}.txt"

    def overridden(self) -> set[str]:
        """Return the clips this --override run already captioned (before a crash)."""
        if self._run_id is None:
            return set()
        try:
            text = self._override_record().read_text(encoding="utf-8")
        except FileNotFoundError:
            return set()
        return {line for line in text.splitlines() if line}

    def finish(self) -> None:
        """Forget an --override run's record: the run is complete."""
        if self._run_id is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._override_record())
