"""Data-parallel jobs on CPU: 2 gloo ranks under torchrun, owned by `train` in this process.

The 2-rank LoRA equals one process over the same samples; a stop request ends both ranks at
one step and the resume matches an uninterrupted run; kill -9 of a rank, or of the owner,
ends the launch cleanly with nothing half-written and no rank left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from safetensors.torch import load_file
from test_trainer_support import BASE, RecordingRun, merge

from ltxq.config import TrainingConfig, parse_config
from ltxq.errors import TrainingError
from ltxq.run import Outcome, TrainResult
from ltxq.trainer import checkpoint as ckpt
from ltxq.trainer import train, warm
from ltxq.trainer.demo_data import write_demo_dataset
from ltxq.trainer.export import LORA_FILE
from ltxq.trainer.launch import CONTROL_DIR, Control, _alive_rank

STEPS = 30
# A guard against a hung launch (a failure, not a timing check): 2 ranks take about 10 s.
LAUNCH_TIMEOUT_S = 240
# Float precision: the LoRA weights are about 0.25, float32 ulps there are 3e-8, and the
# two runs sum the same gradients in another order (measured: 5.2e-8 after 30 steps).
EQUAL = 1e-7


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multiproc")
    write_demo_dataset(root / "demo", clips=3, width=48, height=40, frames=10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LTXQ_CACHE", str(root / "cache"))  # the ranks inherit it
        yield root


def _config(demo: Path, processes: int, **overrides: dict[str, Any]) -> TrainingConfig:
    # Batch 1 on each of 2 ranks = batch 2 in one process. No dropout and no first-frame
    # conditioning: one process draws the dropout masks of both samples from one stream, and
    # its loss weighs samples by their kept tokens, where the ranks average per-rank losses.
    raw = merge(BASE, {"data": {"dataset": str(demo / "demo")},
                       "lora": {"dropout": 0.0},
                       # Rank 0 renders alone while its peer waits for the next step.
                       "validation": {"prompts": ["a red ball"], "interval": 15},
                       "optimization": {"steps": STEPS, "batch_size": 2 // processes,
                                        "first_frame_conditioning_p": 0.0},
                       "resources": {"processes": processes}})
    return parse_config(merge(raw, overrides))


def _train(config: TrainingConfig, run: RecordingRun) -> TrainResult:
    """Call `train` with a deadline, so a hung launch fails the test instead of the suite."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = train(config, run)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(LAUNCH_TIMEOUT_S)
    if thread.is_alive():
        pytest.fail(f"train did not return within {LAUNCH_TIMEOUT_S} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


@pytest.fixture(scope="module")
def one_process(demo: Path) -> tuple[TrainResult, RecordingRun]:
    run = RecordingRun(demo / "one")
    return _train(_config(demo, 1), run), run


@pytest.fixture(scope="module")
def two_ranks(demo: Path) -> tuple[TrainResult, RecordingRun]:
    run = RecordingRun(demo / "two")
    return _train(_config(demo, 2), run), run


def test_two_ranks_equal_one_process_over_the_same_samples(one_process, two_ranks) -> None:
    (one, one_run), (two, two_run) = one_process, two_ranks
    assert two.outcome is Outcome.COMPLETED and two.step == STEPS
    diff = _max_diff(one.lora_path, two.lora_path)
    print(f"max abs LoRA diff, 2 ranks vs 1 process: {diff:.3g}")
    print(f"s/step: 1 process batch 2 {one_run.progress_calls[-1][4]:.4f}, "
          f"2 ranks batch 1 each {two_run.progress_calls[-1][4]:.4f}")
    assert diff <= EQUAL, diff
    # Rank 0's reports reached the owner's Run: every step, with the ranks' mean loss.
    assert [p[0] for p in two_run.progress_calls] == list(range(1, STEPS + 1))
    for mine, theirs in zip(two_run.progress_calls, one_run.progress_calls, strict=True):
        assert mine[2] == pytest.approx(theirs[2], rel=1e-5)
    assert [s for _, s in two_run.checkpoints] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert [(p.name, s) for p, s in two_run.samples] == [("step_000015_0.mp4", 15),
                                                         ("step_000030_0.mp4", 30)]
    assert two.validation_sample == two.lora_path.parent / "samples" / "step_000030_0.mp4"
    assert two.peak_memory_gib is not None and two.peak_memory_gib > 0  # rank 0's, passed up
    assert f"2 ranks ended at step {STEPS} (completed)" in two_run.logs
    assert not warm._cache
    # Only rank 0 wrote outputs, the same ones as one process; the control folder is gone.
    out = two.lora_path.parent
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in one.lora_path.parent.iterdir())
    assert not (out / CONTROL_DIR).exists()


def test_stop_ends_both_ranks_at_one_step_and_resume_matches(demo: Path, two_ranks) -> None:
    config = _config(demo, 2)
    out = demo / "stopped"
    run = RecordingRun(out, stop_at=5)
    stopped = _train(config, run)
    assert stopped.outcome is Outcome.STOPPED
    assert 5 <= stopped.step < STEPS
    # The owner checks that every rank reported the same final step before saying this.
    assert f"2 ranks ended at step {stopped.step} (stopped)" in run.logs
    assert ckpt.latest(out / "checkpoints").step == stopped.step
    assert stopped.checkpoint == out / "checkpoints" / ckpt.folder_name(stopped.step)
    assert not (out / LORA_FILE).exists()

    again = RecordingRun(out)
    resumed = _train(config, again)
    assert resumed.outcome is Outcome.COMPLETED
    assert [p[0] for p in again.progress_calls] == list(range(stopped.step + 1, STEPS + 1))
    diff = _max_diff(resumed.lora_path, two_ranks[0].lora_path)
    print(f"max abs LoRA diff, stopped+resumed vs uninterrupted (2 ranks): {diff:.3g}")
    assert diff <= EQUAL, diff


class KillingRun(RecordingRun):
    """Kills rank 1 with SIGKILL as soon as rank 0 reports step KILL_AT."""

    def __init__(self, output_dir: Path, kill_at: int) -> None:
        super().__init__(output_dir)
        self.kill_at = kill_at
        self.killed: int | None = None

    def progress(self, step: int, total: int, loss: float, lr: float, sps: float) -> None:
        super().progress(step, total, loss, lr, sps)
        if step >= self.kill_at and self.killed is None:
            self.killed = int(Control(self.output_dir / CONTROL_DIR).pid_file(1).read_text())
            os.kill(self.killed, signal.SIGKILL)


def test_kill_9_of_a_rank_fails_cleanly_and_one_process_resumes(demo: Path,
                                                                one_process) -> None:
    config = _config(demo, 2, checkpoints={"interval": 2})
    out = demo / "killed"
    run = KillingRun(out, kill_at=2)
    with pytest.raises(TrainingError, match=r"rank 1 of 2 died \(killed by SIGKILL\)"):
        _train(config, run)
    assert run.killed is not None
    control = Control(out / CONTROL_DIR)
    assert not any(_alive_rank(int(control.pid_file(r).read_text())) for r in (0, 1))
    assert control.log.exists()  # kept for the post-mortem
    # Nothing half-written: no final LoRA, no temporary checkpoint, the newest one complete.
    assert not (out / LORA_FILE).exists()
    assert not list((out / "checkpoints").glob(".tmp-*"))
    newest = ckpt.latest(out / "checkpoints")
    assert newest is not None and 2 <= newest.step < STEPS
    # A 2-rank checkpoint is a 1-process checkpoint of batch 2: resume it in this process.
    resumed = _train(_config(demo, 1, checkpoints={"interval": 2}), RecordingRun(out))
    assert resumed.outcome is Outcome.COMPLETED
    diff = _max_diff(resumed.lora_path, one_process[0].lora_path)
    print(f"max abs LoRA diff, 2 ranks killed + 1-process resume vs 1 process: {diff:.3g}")
    assert diff <= EQUAL, diff


# The owner in a fresh process; it stops reading at step 3, so the test can kill -9 it.
OWNER = """
import sys, time, tomllib
from pathlib import Path
from ltxq.config import parse_config
from ltxq.trainer import train

config_file, output_dir, marker = sys.argv[1:4]

class OwnerRun:
    job_id = 7
    device = "cpu"
    output_dir = Path(output_dir)
    def should_stop(self): return False
    def progress(self, step, total, loss, lr, sps):
        if step >= 3:
            Path(marker).write_text(str(step))
            time.sleep(600)
    def log(self, message): print(message, flush=True)
    def checkpoint_saved(self, path, step): pass
    def sample_written(self, path, step): pass

train(parse_config(tomllib.loads(Path(config_file).read_text())), OwnerRun())
"""


def test_ranks_exit_without_writing_when_their_owner_dies(demo: Path) -> None:
    # Long enough that the ranks cannot finish on their own while the test kills the owner.
    raw = merge(BASE, {"data": {"dataset": str(demo / "demo")},
                       "optimization": {"steps": 3000}, "checkpoints": {"interval": 1000},
                       "resources": {"processes": 2}})
    config_file = demo / "owner.toml"
    config_file.write_text(tomli_w.dumps(raw))
    out, marker = demo / "orphans", demo / "owner_at_step_3"
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(config_file), str(out),
                              str(marker)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not marker.exists():
            if owner.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"owner never reached step 3: {owner.communicate()[0]!r}")
            time.sleep(0.1)
        os.kill(owner.pid, signal.SIGKILL)
    finally:
        owner.kill()
        owner.communicate()
    control = Control(out / CONTROL_DIR)
    pids = [int(control.pid_file(r).read_text()) for r in (0, 1)]
    deadline = time.monotonic() + 60
    while any(_alive_rank(pid) for pid in pids):
        if time.monotonic() > deadline:
            for pid in pids:
                if _alive_rank(pid):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail("the ranks outlived their owner by 60 s")
        time.sleep(0.1)
    statuses = [control.status(r) for r in (0, 1)]
    # Each rank saw the owner gone (or was stopped by torchrun after its peer left).
    assert any(s is not None and s["state"] == "orphaned" for s in statuses), statuses
    assert not (out / LORA_FILE).exists()
    assert ckpt.latest(out / "checkpoints") is None  # no write after the owner died
