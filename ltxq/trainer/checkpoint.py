"""Checkpoint folders: `checkpoints/step_NNNNN/`, complete or absent.

A folder is written under a hidden temporary name, every file fsynced, then published with
one rename and the parent fsynced: a crash leaves either the whole folder or a `.tmp-*`
folder that readers ignore (and the next save removes). Tensors go to safetensors, the rest
to `torch.save` of plain dicts, ints and tensors, read back with `weights_only=True`:
nothing in a checkpoint can run code when loaded.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ltxq import fsutil
from ltxq.errors import TrainingError

LORA_FILE = "lora.safetensors"
STATE_FILE = "training_state.pt"
META_FILE = "meta.json"
FILES = (LORA_FILE, STATE_FILE, META_FILE)
FORMAT = 1
_NAME = re.compile(r"step_(\d{5,})")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder."""

    path: Path
    step: int

    def meta(self) -> dict[str, Any]:
        """Return the JSON metadata (step, total steps, config fingerprint)."""
        return json.loads((self.path / META_FILE).read_text())

    def lora(self) -> dict[str, torch.Tensor]:
        """Return the LoRA weights (CPU)."""
        return load_file(self.path / LORA_FILE)

    def state(self) -> dict[str, Any]:
        """Return optimizer, scheduler, RNG and data-order state (CPU, no unpickling of code)."""
        return torch.load(self.path / STATE_FILE, map_location="cpu", weights_only=True)


def folder_name(step: int) -> str:
    """Return the folder name of STEP (zero-padded so `ls` sorts by step)."""
    return f"step_{step:05d}"


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Return the complete checkpoints under ROOT, oldest first."""
    found = []
    try:
        entries = list(root.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _NAME.fullmatch(entry.name)
        # A folder missing a file was not written by `save` (a copy cut short): skip it.
        if m and entry.is_dir() and _complete(entry):
            found.append(Checkpoint(entry, int(m.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest(root: Path) -> Checkpoint | None:
    """Return the newest complete checkpoint under ROOT, if any."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save(root: Path, step: int, lora: dict[str, torch.Tensor], state: dict[str, Any],
         meta: dict[str, Any], keep_last: int) -> Checkpoint:
    """Publish checkpoint STEP under ROOT atomically, then keep only the newest KEEP_LAST.

    A full disk raises TrainingError naming the step not written and the step kept; the
    half-written folder is removed and no older checkpoint is pruned.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / folder_name(step)
    if final.is_dir() and not _complete(final):
        shutil.rmtree(final)  # not ours (a cut-short copy): replace it
    if not final.is_dir():
        tmp = root / f".tmp-{folder_name(step)}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            _write(tmp, step, lora, state, meta)
            os.rename(tmp, final)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = _disk_full(e)
            if reason is None:
                raise
            kept = latest(root)
            kept_text = f"step {kept.step} kept" if kept else "no checkpoint kept"
            raise TrainingError(f"{reason} (checkpoint step {step} not written; {kept_text})"
                                ) from e
        fsutil.fsync(root)
    prune(root, keep_last)
    return Checkpoint(final, step)


def _write(folder: Path, step: int, lora: dict[str, torch.Tensor], state: dict[str, Any],
           meta: dict[str, Any]) -> None:
    """Write the checkpoint files into FOLDER and fsync them and it."""
    save_file(lora, folder / LORA_FILE)
    torch.save(state, folder / STATE_FILE)
    (folder / META_FILE).write_text(json.dumps({"format": FORMAT, "step": step, **meta},
                                               indent=2, sort_keys=True) + "\n")
    for name in FILES:
        fsutil.fsync(folder / name)
    fsutil.fsync(folder)


# How a full disk shows when torch.save writes (its zip writer checks each write's position,
# or the stream fails at open) and when safetensors does (the OS error in words).
_FULL_DISK_TEXTS = {"unexpected pos": "no space left on device",
                    "iostream error": "no space left on device",
                    "No space left on device": "no space left on device",
                    "Disk quota exceeded": "disk quota exceeded"}


def _disk_full(e: BaseException) -> str | None:
    """Return "no space left on device" (or the quota's words) if E says so, else None."""
    if isinstance(e, OSError):
        return {errno.ENOSPC: "no space left on device",
                errno.EDQUOT: "disk quota exceeded"}.get(e.errno or 0)
    if isinstance(e, Exception):  # RuntimeError from torch, SafetensorError
        text = str(e)
        return next((why for t, why in _FULL_DISK_TEXTS.items() if t in text), None)
    return None


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest KEEP_LAST checkpoints, and leftover temporary folders."""
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old.path, ignore_errors=True)
    for entry in root.glob(".tmp-step_*"):
        # Only this run writes here (the job lock says so): a tmp folder is a dead write.
        shutil.rmtree(entry, ignore_errors=True)


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in FILES)
