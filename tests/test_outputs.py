"""Output folders record their job: picking a free folder, taking it, refusing another's."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from ltxq.errors import TrainingError
from ltxq.outputs import OWNER_FILE, owner_of, pick_output_dir, take_output_dir

KEY, OTHER = uuid.uuid4().hex, uuid.uuid4().hex


def _own(folder: Path, key: str, job_id: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWNER_FILE).write_text(json.dumps({"key": key, "job_id": job_id}))


def _old_checkpoint(folder: Path, step: int = 4) -> Path:
    ckpt = folder / "checkpoints" / f"step_{step:05d}"
    ckpt.mkdir(parents=True)
    (ckpt / "lora.safetensors").write_bytes(b"old")
    return ckpt


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*")}


# --- pick -----------------------------------------------------------------------------------


def test_pick_prefers_a_free_or_own_folder(tmp_path: Path) -> None:
    preferred = tmp_path / "lora_r16_job1"
    assert pick_output_dir(preferred, KEY) == preferred
    assert not preferred.exists()  # picking creates nothing
    _own(preferred, KEY)
    assert pick_output_dir(preferred, KEY) == preferred


def test_pick_skips_folders_of_other_jobs_and_unowned_ones(tmp_path: Path) -> None:
    """`rm -rf spool`, then a new job 1: it gets lora_r16_job1-2, not the old run."""
    preferred = tmp_path / "lora_r16_job1"
    _own(preferred, OTHER)
    assert pick_output_dir(preferred, KEY) == tmp_path / "lora_r16_job1-2"
    (tmp_path / "lora_r16_job1-2").mkdir()                  # unowned (before owner files)
    (tmp_path / "lora_r16_job1-3").write_text("a file")      # not even a folder
    (tmp_path / "lora_r16_job1-4").symlink_to(tmp_path / "nowhere")
    assert pick_output_dir(preferred, KEY) == tmp_path / "lora_r16_job1-5"
    _own(tmp_path / "lora_r16_job1-4-x", KEY)  # a longer name is no candidate
    _own(tmp_path / "lora_r16_job1-3b", KEY)
    assert pick_output_dir(preferred, KEY) == tmp_path / "lora_r16_job1-5"


# --- owner_of -------------------------------------------------------------------------------


def test_owner_of(tmp_path: Path) -> None:
    assert owner_of(tmp_path / "missing") is None
    assert owner_of(tmp_path) is None
    _own(tmp_path, KEY, 3)
    assert owner_of(tmp_path) == {"key": KEY, "job_id": 3}
    (tmp_path / OWNER_FILE).write_text("[1, 2]")
    assert owner_of(tmp_path) == {"key": None, "error": "not a JSON object"}
    (tmp_path / OWNER_FILE).write_bytes(b"\xff{")
    assert owner_of(tmp_path)["key"] is None


# --- take -----------------------------------------------------------------------------------


def test_take_creates_the_folder_and_records_the_owner(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "lora_r16_job7"
    take_output_dir(folder, KEY, 7, spool=tmp_path / "spool")
    record = owner_of(folder)
    assert record is not None
    assert (record["key"], record["job_id"], record["spool"]) == (KEY, 7, str(tmp_path / "spool"))
    assert record["created_at"].endswith("+00:00")
    assert sorted(os.listdir(folder)) == [OWNER_FILE]  # no staging file left
    before = (folder / OWNER_FILE).read_bytes()
    take_output_dir(folder, KEY, 7)  # again (a resumed job): unchanged
    assert (folder / OWNER_FILE).read_bytes() == before


def test_take_refuses_another_jobs_folder_and_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "lora_r16_job1"
    _own(folder, OTHER, 1)
    _old_checkpoint(folder)
    before = _snapshot(folder)
    with pytest.raises(TrainingError) as info:
        take_output_dir(folder, KEY, 1)
    assert str(info.value) == (f"output folder {folder} belongs to another job (key {OTHER}, "
                               f"job 1); refusing to resume into it")
    assert _snapshot(folder) == before


def test_take_refuses_an_unreadable_owner_file(tmp_path: Path) -> None:
    (tmp_path / OWNER_FILE).write_text("{torn")
    with pytest.raises(TrainingError, match=rf"belongs to another job \({OWNER_FILE} not JSON"):
        take_output_dir(tmp_path, KEY, 1)


def test_take_adopts_an_unowned_folder_without_outputs(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("# a run that never got to a checkpoint")
    take_output_dir(tmp_path, KEY, 1)
    assert owner_of(tmp_path)["key"] == KEY


@pytest.mark.parametrize("leftover", ["checkpoint", "samples/step_000004_0.mp4",
                                      "pytorch_lora_weights.safetensors"])
def test_take_refuses_an_unowned_folder_with_old_outputs(tmp_path: Path, leftover: str) -> None:
    if leftover == "checkpoint":
        _old_checkpoint(tmp_path)
    else:
        (tmp_path / leftover).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / leftover).write_bytes(b"old")
    before = _snapshot(tmp_path)
    with pytest.raises(TrainingError, match=f"holds another job's outputs .* no {OWNER_FILE}"):
        take_output_dir(tmp_path, KEY, 1)
    assert _snapshot(tmp_path) == before


def test_take_adopts_old_outputs_its_own_checkpoint_lies_in(tmp_path: Path) -> None:
    """A job that ran here before owner files existed: its [job].checkpoint says so."""
    ckpt = _old_checkpoint(tmp_path)
    with pytest.raises(TrainingError):
        take_output_dir(tmp_path, KEY, 1, recorded_checkpoint=tmp_path.parent / "elsewhere")
    take_output_dir(tmp_path, KEY, 1, recorded_checkpoint=ckpt)
    assert owner_of(tmp_path)["key"] == KEY


def test_a_racer_that_wrote_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ltxq import outputs

    real = outputs._create

    def racer_first(dest: Path, text: str) -> None:
        _own(tmp_path, OTHER, 2)
        real(dest, text)

    monkeypatch.setattr(outputs, "_create", racer_first)
    with pytest.raises(TrainingError, match=f"key {OTHER}, job 2"):
        take_output_dir(tmp_path, KEY, 1)
    assert owner_of(tmp_path)["key"] == OTHER
    assert sorted(os.listdir(tmp_path)) == [OWNER_FILE]


# --- the trainer takes its folder -------------------------------------------------------------


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from test_trainer_support import make_config

    from ltxq.trainer.demo_data import write_demo_dataset

    monkeypatch.setenv("LTXQ_CACHE", str(tmp_path / "cache"))
    write_demo_dataset(tmp_path / "demo", clips=2, width=48, height=40, frames=10)
    return make_config(data={"dataset": str(tmp_path / "demo")},
                       optimization={"steps": 4, "warmup_steps": 0, "batch_size": 1,
                                     "gradient_accumulation_steps": 1},
                       checkpoints={"interval": 2})


def _run(folder: Path, key: str | None, job_id: int | None = 1, stop_at: int | None = None):
    from test_trainer_support import RecordingRun

    run = RecordingRun(folder, stop_at=stop_at)
    run.job_key, run.job_id = key, job_id
    return run


def test_training_into_another_jobs_folder_is_refused_before_anything(
        tmp_path: Path, demo) -> None:
    from ltxq.trainer import train

    folder = tmp_path / "out"
    _own(folder, OTHER, 1)
    _old_checkpoint(folder)
    before = _snapshot(folder)
    with pytest.raises(TrainingError, match="belongs to another job"):
        train(demo, _run(folder, KEY))
    assert _snapshot(folder) == before
    assert not (tmp_path / "cache").exists()  # refused before preprocessing


def test_training_resumes_its_own_folder(tmp_path: Path, demo) -> None:
    from ltxq.run import Outcome
    from ltxq.trainer import train

    folder = tmp_path / "out"
    first = train(demo, _run(folder, KEY, job_id=7, stop_at=2))
    assert first.outcome is Outcome.STOPPED
    assert owner_of(folder)["key"] == KEY and owner_of(folder)["job_id"] == 7
    record = (folder / OWNER_FILE).read_bytes()
    run = _run(folder, KEY, job_id=7)
    assert train(demo, run).outcome is Outcome.COMPLETED
    assert any(line.startswith("resuming from") for line in run.logs)
    assert [p[0] for p in run.progress_calls] == [3, 4]
    assert (folder / OWNER_FILE).read_bytes() == record


def test_ltxq_train_runs_are_not_checked_and_a_job_refuses_their_folder(
        tmp_path: Path, demo) -> None:
    from ltxq.run import Outcome
    from ltxq.trainer import train

    folder = tmp_path / "out"
    assert train(demo, _run(folder, None, None)).outcome is Outcome.COMPLETED
    assert owner_of(folder) is None  # `ltxq train` writes no owner file
    with pytest.raises(TrainingError, match="holds another job's outputs"):
        train(demo, _run(folder, KEY))
