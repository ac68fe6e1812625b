"""The datasets page's folder work: list, create, upload, caption edits, and queuing the
caption and preprocess jobs. Every name from a request is checked to be one plain file name
inside the datasets root; nothing from a request is ever used as a path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import unicodedata
from pathlib import Path
from typing import Any, BinaryIO

from ltxq import fsutil
from ltxq.errors import ConfigError, LtxqError
from ltxq.spool import Spool

# ltxq.trainer.media's lists (that module imports torch; the server must not).
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
MAX_UPLOAD_BYTES = 2 << 30  # per file
MAX_CAPTION_CHARS = 10_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,127}")


def safe_name(raw: str) -> str | None:
    """Return RAW as a plain file name (no folders, no leading dot), or None if nothing is left.

    Folder parts are dropped (an uploaded "a/../b.mp4" becomes "b.mp4"), accents folded to
    ASCII, other characters replaced by "_".
    """
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip(" .")
    base = base.lstrip("._- ")
    return base if base and _NAME.fullmatch(base) and base not in (".", "..") else None


class Datasets:
    """The dataset folders under ROOT (the server's --datasets)."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()

    def folder(self, name: str) -> Path:
        """Return the dataset NAME's folder; LtxqError unless it is a plain existing name."""
        if safe_name(name) != name:
            raise LtxqError(f"not a dataset name: {name!r}")
        path = self.root / name
        if not path.is_dir() or path.is_symlink():
            raise LtxqError(f"no dataset {name!r}")
        return path

    def clip(self, dataset: str, name: str) -> Path:
        """Return the media file NAME of DATASET; LtxqError unless it is one."""
        folder = self.folder(dataset)
        if safe_name(name) != name or Path(name).suffix.lower() not in MEDIA_EXTENSIONS:
            raise LtxqError(f"not a clip name: {name!r}")
        path = folder / name
        if not path.is_file() or path.is_symlink():
            raise LtxqError(f"no clip {name!r} in {dataset!r}")
        return path

    def names(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            return sorted(e.name for e in os.scandir(self.root)
                          if e.is_dir(follow_symlinks=False) and safe_name(e.name) == e.name)
        return []

    def summary(self, name: str) -> dict[str, Any]:
        """Return NAME's clip count, captioned count and preprocessing cache state."""
        clips = self.clips(name)
        return {"name": name, "clips": len(clips),
                "captioned": sum(1 for c in clips if c["caption"] is not None),
                "cached": self.cache_state(self.root / name)}

    def clips(self, name: str) -> list[dict[str, Any]]:
        """List NAME's media files with their sidecar captions (None: uncaptioned)."""
        folder = self.folder(name)
        table = _caption_table(folder)
        out = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False) or entry.name.startswith("."):
                continue
            if Path(entry.name).suffix.lower() not in MEDIA_EXTENSIONS:
                continue
            caption = _sidecar(folder / entry.name)
            if caption is None:
                caption = table.get(entry.name)
            out.append({"name": entry.name, "caption": caption,
                        "video": Path(entry.name).suffix.lower() in VIDEO_EXTENSIONS})
        return out

    @staticmethod
    def cache_state(folder: Path) -> int:
        """Count the preprocessing caches built from FOLDER (any settings)."""
        env = os.environ.get("LTXQ_CACHE")
        root = Path(env).expanduser() if env else Path.home() / ".cache/ltxq/preprocessed"
        found = 0
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(root):
                if entry.name.startswith("."):
                    continue
                with contextlib.suppress(OSError, ValueError), \
                        open(Path(entry.path) / "manifest.json", "rb") as f:
                    if json.load(f).get("dataset") == str(folder):
                        found += 1
        return found

    def create(self, name: str) -> Path:
        """Make the dataset folder NAME (LtxqError if the name is not plain or it exists)."""
        if safe_name(name) != name:
            raise LtxqError(f"not a dataset name: {name!r} (letters, digits, . _ - and space)")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        try:
            path.mkdir()
        except FileExistsError:
            raise LtxqError(f"dataset {name!r} exists already") from None
        return path

    def write_clip(self, dataset: str, raw_name: str, source: BinaryIO) -> str:
        """Copy an uploaded clip from SOURCE atomically under a sanitised name; return the name.

        Staged in ROOT/.ltxq-tmp (same filesystem), fsynced, renamed into place; a file over
        MAX_UPLOAD_BYTES is refused and its staging file removed.
        """
        folder = self.folder(dataset)
        name = safe_name(raw_name)
        if name is None or Path(name).suffix.lower() not in MEDIA_EXTENSIONS:
            raise LtxqError(f"{raw_name!r}: not an allowed media file "
                            f"({', '.join(sorted(MEDIA_EXTENSIONS))})")
        staging = self.root / ".ltxq-tmp"
        staging.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=staging, prefix=".upload-")
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(1 << 20):
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        raise LtxqError(f"{name}: larger than {MAX_UPLOAD_BYTES >> 20} MiB")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, folder / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsutil.fsync(folder)
        return name

    def set_caption(self, dataset: str, clip: str, text: str) -> None:
        """Write CLIP's sidecar caption atomically (an empty text removes it)."""
        path = self.clip(dataset, clip)
        text = text.strip()
        if len(text) > MAX_CAPTION_CHARS:
            raise LtxqError(f"a caption has at most {MAX_CAPTION_CHARS} characters")
        sidecar = path.with_suffix(".txt")
        if not text:
            sidecar.unlink(missing_ok=True)
            return
        staging = self.root / ".ltxq-tmp"
        fsutil.write_atomic(sidecar, text + "\n", staging)


def _sidecar(media: Path) -> str | None:
    try:
        return media.with_suffix(".txt").read_text(encoding="utf-8").strip()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return None


def _caption_table(folder: Path) -> dict[str, str]:
    """Read captions.json/.jsonl ({media_path, caption}) when present; best effort."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        data = json.loads((folder / "captions.json").read_text(encoding="utf-8"))
        rows = ([{"media_path": k, "caption": v} for k, v in data.items()]
                if isinstance(data, dict) else data)
        for row in rows:
            out[Path(str(row["media_path"])).name] = str(row["caption"])
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        for line in (folder / "captions.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                out[Path(str(row["media_path"])).name] = str(row["caption"])
    return out


def queue_dataset_job(spool: Spool, kind: str, folder: Path, model: str = "",
                      resolution: str = "") -> int:
    """Queue a caption or preprocess job on FOLDER through the captioning issue's submit path
    (the one `ltxq submit --caption/--preprocess` takes); return its id."""
    from ltxq.caption.cli import submit_kind

    if kind not in ("caption", "preprocess"):
        raise LtxqError(f"unknown dataset job {kind!r}")
    overrides: dict[str, Any] = {"job.name": f"{kind} {folder.name}"}
    if model.strip():
        overrides["model.source"] = model.strip()
    if resolution.strip() and kind == "preprocess":
        overrides["data.resolution"] = resolution.strip()
    try:
        return submit_kind(spool, kind, folder, overrides)
    except ConfigError as e:
        raise LtxqError(f"cannot queue a {kind} job: {e}") from None
