"""The compute-node entry without a cluster: signals become should_stop, outcomes become exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ltxq import slurm_entry
from ltxq.errors import TrainingError
from ltxq.job import dump_job, job_from_dict
from ltxq.run import Outcome, TrainResult
from ltxq.slurm_entry import (EXIT_COMPLETED, EXIT_FAILED, EXIT_NOT_OURS, EXIT_STOPPED,
                              EXIT_USAGE, EntryRun, StopFlag)

CONFIG = {"model": {"source": "tiny-random"}, "lora": {"rank": 4},
          "data": {"dataset": "clips", "resolution": "64x64x9"},
          "optimization": {"steps": 20},
          "validation": {"interval": 10, "video": "64x64x9"},
          "checkpoints": {"interval": 5}}


def make_spool(root: Path, job_id: int = 7, *, slurm_job_id: str | None = None,
               file_name: str | None = None) -> Path:
    """Make a spool with job JOB_ID already claimed (in running/), as the daemon leaves it."""
    spool = root / "spool"
    for sub in ("pending", "running", "done", "failed", "cancelled", "logs", "control", "tmp"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    doc = {"job": {"id": job_id, "name": "t"}, **CONFIG, "output": {"root": str(root / "out")}}
    if slurm_job_id:
        doc["job"]["slurm_job_id"] = slurm_job_id
    job = job_from_dict(doc, base_dir=root)
    (spool / "running" / (file_name or f"{job_id:06d}.toml")).write_text(dump_job(job))
    return spool


def stepping_train(stop_after_steps: int | None = None):
    """A stand-in trainer: steps until should_stop(), then 'saves a checkpoint'."""
    def train(config, run) -> TrainResult:
        total = config.optimization.steps
        for step in range(1, total + 1):
            if stop_after_steps is not None and step > stop_after_steps:
                # What Slurm's signal does, delivered to this very process.
                os.kill(os.getpid(), signal.SIGUSR1)
            if run.should_stop():
                ckpt = run.output_dir / "checkpoints" / f"step_{step - 1:05d}"
                run.checkpoint_saved(ckpt, step - 1)
                return TrainResult(Outcome.STOPPED, step - 1, total, checkpoint=ckpt)
            run.progress(step, total, 0.25, 1e-4, 0.01)
        return TrainResult(Outcome.COMPLETED, total, total,
                           lora_path=run.output_dir / "pytorch_lora_weights.safetensors")
    return train


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in slurm_entry.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_completed_job_exits_0_and_logs(tmp_path: Path, monkeypatch, restore_signals) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    spool = make_spool(tmp_path)
    stop = StopFlag()
    status, result, error = slurm_entry.run_job(spool, 7, stop, train=stepping_train())
    assert (status, error) == (EXIT_COMPLETED, None)
    assert result is not None and result.step == 20
    assert result.lora_path == tmp_path / "out" / "lora_r4_job7" / "pytorch_lora_weights.safetensors"
    log = (spool / "logs" / "7.log").read_text()
    assert "step 20/20 loss 0.25" in log
    assert "completed at step 20/20" in log


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_slurm_signal_becomes_should_stop(tmp_path: Path, monkeypatch, restore_signals,
                                          sig: signal.Signals) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    spool = make_spool(tmp_path)
    stop = StopFlag()
    stop.install()
    fired = []

    def train(config, run):
        for step in range(1, 100):
            if step == 4:
                os.kill(os.getpid(), sig)   # the handler runs before kill returns
                fired.append(step)
            if run.should_stop():
                run.checkpoint_saved(run.output_dir / "checkpoints" / "step_00003", 3)
                return TrainResult(Outcome.STOPPED, 3, 99,
                                   checkpoint=run.output_dir / "checkpoints" / "step_00003")
        raise AssertionError("should_stop never became true")

    status, result, _ = slurm_entry.run_job(spool, 7, stop, train=train)
    assert fired == [4]
    assert status == EXIT_STOPPED
    assert result is not None and result.outcome == Outcome.STOPPED and result.step == 3
    log = (spool / "logs" / "7.log").read_text()
    assert f"received {sig.name} from Slurm" in log
    assert "stopped at step 3/99" in log


def test_cancel_file_stops_the_job(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    spool = make_spool(tmp_path)
    (spool / "control" / "7.cancel").touch()
    status, result, _ = slurm_entry.run_job(spool, 7, StopFlag(), train=stepping_train())
    assert status == EXIT_STOPPED and result is not None and result.step == 0


@pytest.mark.parametrize(("exc", "words"), [
    (TrainingError("dataset has no usable clips"), "dataset has no usable clips"),
    (RuntimeError("CUDA out of memory"), "RuntimeError: CUDA out of memory"),
])
def test_training_error_exits_1_with_the_reason(tmp_path: Path, monkeypatch, exc: Exception,
                                                words: str) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    spool = make_spool(tmp_path)

    def train(config, run):
        raise exc

    status, result, error = slurm_entry.run_job(spool, 7, StopFlag(), train=train)
    assert (status, result, error) == (EXIT_FAILED, None, words)
    assert f"failed: {words}" in (spool / "logs" / "7.log").read_text()


def test_job_not_running_is_left_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    spool = make_spool(tmp_path)
    called = []
    status, _, error = slurm_entry.run_job(spool, 8, StopFlag(), train=lambda c, r: called.append(1))
    assert status == EXIT_NOT_OURS and "not in" in error
    assert called == [] and not (spool / "logs" / "8.log").exists()


def test_job_of_another_slurm_job_is_left_alone(tmp_path: Path, monkeypatch) -> None:
    spool = make_spool(tmp_path, slurm_job_id="41")
    monkeypatch.setenv("SLURM_JOB_ID", "40")
    called = []
    status, _, error = slurm_entry.run_job(spool, 7, StopFlag(), train=lambda c, r: called.append(1))
    assert status == EXIT_NOT_OURS and "belongs to Slurm job 41, not 40" in error
    assert called == []
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    status, _, _ = slurm_entry.run_job(spool, 7, StopFlag(), train=stepping_train())
    assert status == EXIT_COMPLETED


def test_unpadded_file_name_is_found(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, file_name="7.toml")
    assert slurm_entry.find_running(spool, 7) == spool / "running" / "7.toml"
    assert slurm_entry.find_running(tmp_path / "nowhere", 7) is None


def test_invalid_job_file_exits_2_naming_the_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    spool = make_spool(tmp_path)
    path = spool / "running" / "000007.toml"
    path.write_text(path.read_text() + "\n[lorra]\nrank = 3\n")
    status, _, error = slurm_entry.run_job(spool, 7, StopFlag(), train=stepping_train())
    assert status == EXIT_USAGE
    assert str(path) in error and "lorra" in error


def test_result_line_round_trip() -> None:
    result = TrainResult(Outcome.STOPPED, 5, 20, checkpoint=Path("/o/checkpoints/step_00005"))
    line = slurm_entry.result_line(EXIT_STOPPED, result, None)
    text = "some stderr noise\n" + line + "\n"
    assert slurm_entry.parse_result_line(text) == {
        "exit": 3, "error": None, "outcome": "stopped", "step": 5, "total_steps": 20,
        "checkpoint": "/o/checkpoints/step_00005", "lora_path": None, "validation_sample": None}
    assert slurm_entry.parse_result_line("nothing here") is None


def test_batch_script_execs_the_entry(tmp_path: Path) -> None:
    text = slurm_entry.batch_script(tmp_path / "my spool", 12, python=Path("/venv/bin/python"),
                                    workdir=tmp_path)
    assert text.startswith("#!/bin/sh\n")
    last = text.strip().splitlines()[-1]
    assert last == (f"exec /venv/bin/python -m ltxq.slurm_entry --spool "
                    f"'{tmp_path / 'my spool'}' --job 12")


def test_entry_process_stops_on_sigusr1_and_prints_result(tmp_path: Path) -> None:
    """A real process: SIGUSR1 (what --signal=B:USR1@N sends) -> checkpoint -> exit 3."""
    spool = make_spool(tmp_path)
    (tmp_path / "slow_trainer.py").write_text(
        "import sys, time\n"
        "from ltxq.run import Outcome, TrainResult\n"
        "def train(config, run):\n"
        "    print('training', flush=True)\n"
        "    for step in range(1, 100000):\n"
        "        if run.should_stop():\n"
        "            return TrainResult(Outcome.STOPPED, step - 1, 100000)\n"
        "        time.sleep(0.01)\n"
        "    return TrainResult(Outcome.COMPLETED, 100000, 100000)\n")
    code = ("import sys, slow_trainer; from ltxq.slurm_entry import main; "
            "sys.exit(main(sys.argv[1:], train=slow_trainer.train))")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.Popen([sys.executable, "-c", code, "--spool", str(spool), "--job", "7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline() == "training\n"
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STOPPED, err
    doc = slurm_entry.parse_result_line(out)
    assert doc is not None and doc["outcome"] == "stopped" and doc["exit"] == EXIT_STOPPED
    assert "received SIGUSR1 from Slurm" in (spool / "logs" / "7.log").read_text()


def test_entry_bad_arguments_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ltxq.slurm_entry", "--spool", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_USAGE
    assert "--job" in proc.stderr


def test_entry_module_imports_nothing_heavy() -> None:
    code = ("import sys, ltxq.slurm_entry, ltxq.slurm; "
            "heavy = [m for m in ('torch', 'diffusers', 'peft', 'transformers', 'accelerate') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_entry_run_satisfies_the_run_protocol(tmp_path: Path) -> None:
    run = EntryRun(job_id=1, output_dir=tmp_path, device=None, log_path=tmp_path / "l.log",
                   cancel_path=tmp_path / "c", stop=StopFlag())
    run.sample_written(tmp_path / "s.mp4", 10)
    run.log("two\nlines")
    lines = (tmp_path / "l.log").read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith(f"sample step 10 written: {tmp_path / 's.mp4'}")
    assert lines[1].endswith("two lines")
    assert not run.should_stop()
    run.stop.set("test")
    assert run.should_stop()
