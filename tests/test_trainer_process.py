"""The `train` entry end to end on a real demo dataset: kill -9 and resume, warm models,
`ltxq train`'s foreground run with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from test_trainer_support import BASE, RecordingRun, merge

from ltxq.config import TrainingConfig, parse_config
from ltxq.run import Outcome
from ltxq.trainer import checkpoint as ckpt
from ltxq.trainer import console, train, warm
from ltxq.trainer.demo_data import write_demo_dataset
from ltxq.trainer.export import LORA_FILE

# Runs the real entry point in a fresh process; blocks forever in progress() at step
# BLOCK_AT (after the checkpoint before it), so the test can kill -9 it mid-run.
CHILD = """
import sys, time, tomllib
from pathlib import Path
from ltxq.config import parse_config
from ltxq.trainer import train

config_file, output_dir, block_at, marker = sys.argv[1:5]

class ChildRun:
    job_id = None
    device = "cpu"
    output_dir = Path(output_dir)
    def should_stop(self): return False
    def progress(self, step, total, loss, lr, sps):
        if step == int(block_at):
            Path(marker).write_text(str(step))
            time.sleep(600)
    def log(self, message): print(message, flush=True)
    def checkpoint_saved(self, path, step): pass
    def sample_written(self, path, step): pass

print(train(parse_config(tomllib.loads(Path(config_file).read_text())), ChildRun()).outcome)
"""


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LTXQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _config(tmp_path: Path, **overrides: dict) -> tuple[TrainingConfig, Path]:
    dataset = tmp_path / "demo"
    if not dataset.is_dir():
        write_demo_dataset(dataset, clips=3, width=48, height=40, frames=10)
    raw = merge(merge(BASE, {"data": {"dataset": str(dataset)}}), overrides)
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.toml"
    path.write_text(tomli_w.dumps(raw))
    return parse_config(raw), path


def _child(config_file: Path, output_dir: Path, block_at: int, marker: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(config_file), str(output_dir),
                             str(block_at), str(marker)], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_kill_9_after_a_checkpoint_then_resume(tmp_path: Path) -> None:
    config, config_file = _config(tmp_path)
    out = tmp_path / "killed"
    marker = tmp_path / "blocked"
    child = _child(config_file, out, block_at=7, marker=marker)
    try:
        deadline = time.monotonic() + 180  # a guard against a hung child, not a timing check
        while not marker.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"child never reached step 7: {child.communicate()}")
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    # Steps 5-7 were lost with the process; step 4 is the newest complete checkpoint.
    assert ckpt.latest(out / "checkpoints").step == 4
    assert not (out / LORA_FILE).exists()

    run = RecordingRun(out)
    resumed = train(config, run)
    assert resumed.outcome is Outcome.COMPLETED
    assert [p[0] for p in run.progress_calls] == list(range(5, 13))
    baseline = train(config, RecordingRun(tmp_path / "whole"))
    diff = _max_diff(resumed.lora_path, baseline.lora_path)
    print("max abs diff", diff)
    assert diff <= 1e-7, diff


def test_warm_job_equals_a_job_alone_in_a_fresh_process(tmp_path: Path) -> None:
    job_b, b_file = _config(tmp_path, optimization={"seed": 11, "steps": 6},
                            checkpoints={"interval": 0})
    alone = _child(b_file, tmp_path / "alone", block_at=-1, marker=tmp_path / "unused")
    # Meanwhile, in this process: another job first, with a different rank, seed, dropout,
    # gradient checkpointing and schedule, then job B on the warm model.
    warm.clear()
    job_a, _ = _config(tmp_path, lora={"rank": 8, "alpha": 4, "dropout": 0.3},
                       optimization={"seed": 3, "steps": 3, "gradient_checkpointing": True,
                                     "scheduler": "cosine"},
                       checkpoints={"interval": 0})
    assert train(job_a, RecordingRun(tmp_path / "a")).outcome is Outcome.COMPLETED
    run_b = RecordingRun(tmp_path / "b")
    warm_b = train(job_b, run_b)
    assert any("warm" in line for line in run_b.logs)
    out, err = alone.communicate(timeout=300)
    assert alone.returncode == 0, err
    assert "completed" in out
    diff = _max_diff(warm_b.lora_path, tmp_path / "alone" / LORA_FILE)
    print("max abs diff", diff)
    assert diff <= 1e-7, diff
    # The warm base model is back to its loaded state: no adapter layers, frozen, eval.
    with warm.components("tiny-random", revision=None, dtype=torch.float32,
                         device=torch.device("cpu"), log=lambda _: None) as components:
        names = [n for n, _ in components.transformer.named_modules()]
        assert not any("lora" in n for n in names)
        assert not components.transformer.training


def test_foreground_run_stops_on_ctrl_c_and_resumes(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    config, _ = _config(tmp_path, optimization={"steps": 6}, checkpoints={"interval": 0})
    out = tmp_path / "fg"
    real_progress = console.ConsoleRun.progress

    def progress_then_ctrl_c(self, step, total, loss, lr, sps):
        real_progress(self, step, total, loss, lr, sps)
        if step == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(console.ConsoleRun, "progress", progress_then_ctrl_c)
    stopped = console.run_foreground(config, out, device="cpu")
    assert stopped.outcome is Outcome.STOPPED and stopped.step == 3
    assert stopped.checkpoint == out / "checkpoints" / "step_00003"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # The console names the checkpoint once, above the bar.
    printed = capsys.readouterr().err
    assert printed.count(str(stopped.checkpoint)) == 1, printed
    assert f"checkpoint step 3: {stopped.checkpoint}" in printed
    monkeypatch.setattr(console.ConsoleRun, "progress", real_progress)
    done = console.run_foreground(config, out, device="cpu")
    assert done.outcome is Outcome.COMPLETED and done.step == 6
    assert (out / LORA_FILE).is_file() and (out / "comfy_lora_weights.safetensors").is_file()
