"""Checkpoint folders: atomic publication, completeness, pruning, safe loading."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from ltxq.errors import TrainingError
from ltxq.trainer import checkpoint as ckpt


def _save(root: Path, step: int, keep_last: int = 5) -> ckpt.Checkpoint:
    lora = {"a.lora_A.weight": torch.full((2, 2), float(step))}
    state = {"step": step, "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}},
                                         "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99)}]},
             "torch_rng": torch.Generator().manual_seed(step).get_state()}
    return ckpt.save(root, step, lora, state, {"total_steps": 100}, keep_last)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    saved = _save(tmp_path, 7)
    assert saved.path == tmp_path / "step_00007"
    assert sorted(p.name for p in saved.path.iterdir()) == sorted(ckpt.FILES)
    found = ckpt.latest(tmp_path)
    assert found == saved
    assert found.meta()["step"] == 7 and found.meta()["total_steps"] == 100
    assert torch.equal(found.lora()["a.lora_A.weight"], torch.full((2, 2), 7.0))
    state = found.state()
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(state["torch_rng"], torch.Generator().manual_seed(7).get_state())


def test_keep_last_prunes_oldest(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        _save(tmp_path, step, keep_last=2)
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [15, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00015", "step_00020"]


def test_half_written_checkpoints_are_ignored_and_cleaned(tmp_path: Path) -> None:
    _save(tmp_path, 4)
    # A save killed before its rename leaves a hidden tmp folder with some files.
    dead = tmp_path / ".tmp-step_00008-deadbeef"
    dead.mkdir()
    (dead / ckpt.LORA_FILE).write_bytes(b"partial")
    # A folder with the right name but missing files (a copy cut short) is not complete.
    cut = tmp_path / "step_00012"
    cut.mkdir()
    (cut / ckpt.LORA_FILE).write_bytes(b"partial")
    assert ckpt.latest(tmp_path).step == 4
    # The next save replaces the cut-short folder and removes the dead tmp folder.
    _save(tmp_path, 12)
    assert ckpt.latest(tmp_path).step == 12
    assert not dead.exists()
    assert ckpt.latest(tmp_path).lora()["a.lora_A.weight"][0, 0] == 12.0


def test_saving_an_existing_step_keeps_it(tmp_path: Path) -> None:
    first = _save(tmp_path, 3)
    before = (first.path / ckpt.META_FILE).stat().st_mtime_ns
    _save(tmp_path, 3)
    assert (first.path / ckpt.META_FILE).stat().st_mtime_ns == before


def test_state_never_unpickles_objects(tmp_path: Path) -> None:
    saved = _save(tmp_path, 1)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"step": 1, "x": Evil()}, saved.path / ckpt.STATE_FILE)
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl|global"):
        saved.state()


def test_no_checkpoints(tmp_path: Path) -> None:
    assert ckpt.latest(tmp_path / "missing") is None
    (tmp_path / "step_notanumber").mkdir()
    assert ckpt.latest(tmp_path) is None


# --- a full disk ------------------------------------------------------------------------------

# What torch.save and safetensors raised when a real (tmpfs) disk filled up.
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
TORCH_FULL_AT_OPEN = "basic_ios::clear: iostream error"
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def _full_disk(error: BaseException):
    def save(*args: object, **kwargs: object) -> None:
        raise error
    return save


@pytest.mark.parametrize(("writer", "error"), [
    ("torch", OSError(errno.ENOSPC, "No space left on device")),
    ("torch", RuntimeError(TORCH_FULL)),
    ("torch", RuntimeError(TORCH_FULL_AT_OPEN)),
    ("safetensors", SafetensorError(SAFETENSORS_FULL)),
])
def test_a_full_disk_names_the_step_kept_and_leaves_no_half_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str,
        error: BaseException) -> None:
    _save(tmp_path, 4, keep_last=1)
    if writer == "torch":
        monkeypatch.setattr(ckpt.torch, "save", _full_disk(error))
    else:
        monkeypatch.setattr(ckpt, "save_file", _full_disk(error))
    with pytest.raises(TrainingError) as info:
        _save(tmp_path, 8, keep_last=1)
    assert str(info.value) == ("no space left on device (checkpoint step 8 not written; "
                               "step 4 kept)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00004"]  # not pruned either
    assert ckpt.latest(tmp_path).step == 4


def test_a_full_disk_before_any_checkpoint(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt, "save_file", _full_disk(OSError(errno.EDQUOT, "quota")))
    with pytest.raises(TrainingError, match=r"^disk quota exceeded \(checkpoint step 2 not "
                                            r"written; no checkpoint kept\)$"):
        _save(tmp_path, 2)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ckpt.torch, "save", _full_disk(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        _save(tmp_path, 2)
    monkeypatch.setattr(ckpt.torch, "save", _full_disk(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        _save(tmp_path, 2)
    assert list(tmp_path.iterdir()) == []
