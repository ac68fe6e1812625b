"""Find the caption of every media file in a dataset folder.

Captions come from one table at the dataset root (`captions.json`, `captions.jsonl` or
`captions.csv`, with `media_path` and `caption`) or from sidecar text files next to the
media (`clip.mp4` -> `clip.txt`). The table wins where both exist. A malformed table is the
user's mistake and raises a TrainingError naming the file and the line or key; a media file
without any caption is only reported by the caller and skipped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath
from typing import Any

from ltxq.errors import TrainingError

CAPTION_FILES = ("captions.json", "captions.jsonl", "captions.csv")
PATH_KEY = "media_path"
CAPTION_KEY = "caption"


def media_key(dataset: Path, path: Path) -> str:
    """Return PATH relative to DATASET as a POSIX string: the name a file is known by."""
    return path.relative_to(dataset).as_posix()


def load_caption_table(dataset: Path) -> tuple[dict[str, str], list[Path]]:
    """Read every caption table at the root of DATASET: {media key: caption} and the files read."""
    captions: dict[str, str] = {}
    used: list[Path] = []
    for name in CAPTION_FILES:
        path = dataset / name
        if not path.is_file():
            continue
        used.append(path)
        reader = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv}[path.suffix]
        try:
            rows = reader(path)
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise TrainingError(f"{path}: unreadable ({e})") from None
        for where, row in rows:
            media, caption = _check_row(path, where, row)
            captions[_normalise(path, where, media)] = caption
    return captions, used


def sidecar_caption(media: Path) -> str | None:
    """Return the text of MEDIA's sidecar `.txt` file, or None when there is none."""
    sidecar = media.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    try:
        return sidecar.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingError(f"{sidecar}: unreadable caption ({e})") from None


def _read_json(path: Path) -> list[tuple[str, Any]]:
    data = _parse_json(path, path.read_text(encoding="utf-8"), "")
    if isinstance(data, dict):
        # Also accept the compact {"clip.mp4": "caption", ...} form.
        if all(isinstance(v, str) for v in data.values()):
            return [(f"key {k!r}", {PATH_KEY: k, CAPTION_KEY: v}) for k, v in data.items()]
        raise TrainingError(f"{path}: expected a list of objects with {PATH_KEY!r} and "
                            f"{CAPTION_KEY!r}, or an object mapping media paths to captions")
    if not isinstance(data, list):
        raise TrainingError(f"{path}: expected a list of objects with {PATH_KEY!r} and "
                            f"{CAPTION_KEY!r}")
    return [(f"item {i}", row) for i, row in enumerate(data)]


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            rows.append((f"line {number}", _parse_json(path, line, f"line {number}: ")))
    return rows


def _read_csv(path: Path) -> list[tuple[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        for key in (PATH_KEY, CAPTION_KEY):
            if key not in header:
                raise TrainingError(f"{path}: line 1: missing column {key!r} "
                                    f"(found: {', '.join(header) or 'nothing'})")
        rows = []
        for row in reader:
            clean = {(k or "").strip(): v for k, v in row.items()}
            rows.append((f"line {reader.line_num}", clean))
        return rows


def _parse_json(path: Path, text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise TrainingError(f"{path}: {where}invalid JSON ({e})") from None


def _check_row(path: Path, where: str, row: Any) -> tuple[str, str]:
    if not isinstance(row, dict):
        raise TrainingError(f"{path}: {where}: expected an object with {PATH_KEY!r} and "
                            f"{CAPTION_KEY!r}")
    for key in (PATH_KEY, CAPTION_KEY):
        if not isinstance(row.get(key), str):
            problem = "missing" if row.get(key) is None else "not a string"
            raise TrainingError(f"{path}: {where}: {key!r} is {problem}")
    return row[PATH_KEY], row[CAPTION_KEY].strip()


def _normalise(table: Path, where: str, media: str) -> str:
    """Turn a table's media path into a media key; it must stay inside the dataset."""
    pure = PurePosixPath(media.strip().replace("\\", "/"))
    if pure.is_absolute():
        try:
            inside = Path(pure).resolve().relative_to(table.parent.resolve())
            pure = PurePosixPath(inside.as_posix())
        except ValueError:
            raise TrainingError(f"{table}: {where}: {PATH_KEY} {media!r} is outside the "
                                "dataset folder") from None
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts or ".." in parts:
        raise TrainingError(f"{table}: {where}: {PATH_KEY} {media!r} must be a path inside "
                            "the dataset folder")
    return "/".join(parts)
