"""A stand-in for the trainer behind the `train(config, run)` seam, for queue tests.

It "trains" config.optimization.steps steps with a tiny sleep each, saves checkpoint folders
`checkpoints/step_NNNNN/` in run.output_dir (keeping them all), resumes from the newest one,
and honours run.should_stop() before every step. Markers in the dataset folder steer it:
  FAIL   raise TrainingError (the file's text is the message)
  CRASH  raise RuntimeError (a bug)
  SLOW   seconds per step (the file's text, default 0.2)
Every start is recorded with O_APPEND in {output.root}/ran.log as
"<job id> <first step> <run.device> <CUDA_VISIBLE_DEVICES>".
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ltxq.errors import TrainingError
from ltxq.run import Outcome, TrainResult

STEP_S = 0.005


def _latest(root: Path) -> int:
    steps = [int(p.name.removeprefix("step_")) for p in root.glob("step_*")
             if (p / "state.txt").exists()]
    return max(steps, default=0)


def _save(run, root: Path, step: int) -> Path:
    folder = root / f"step_{step:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.txt").write_text(f"{step}\n")
    run.checkpoint_saved(folder, step)
    return folder


def train(config, run) -> TrainResult:
    dataset = Path(config.data.dataset)
    if (dataset / "FAIL").exists():
        raise TrainingError((dataset / "FAIL").read_text().strip() or "fake failure")
    if (dataset / "CRASH").exists():
        raise RuntimeError("fake bug\nsecond line")
    delay = STEP_S
    if (dataset / "SLOW").exists():
        delay = float((dataset / "SLOW").read_text().strip() or 0.2)
    total = config.optimization.steps
    interval = config.checkpoints.interval
    run.output_dir.mkdir(parents=True, exist_ok=True)
    ckpts = run.output_dir / "checkpoints"
    start = _latest(ckpts)
    record = Path(config.output.root) / "ran.log"
    record.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = f"{run.job_id} {start} {run.device} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\n"
    os.write(fd, line.encode())
    os.close(fd)
    if start:
        run.log(f"resuming from step {start}")
    checkpoint = ckpts / f"step_{start:05d}" if start else None
    for step in range(start + 1, total + 1):
        if run.should_stop():
            saved = checkpoint is not None and checkpoint.name == f"step_{step - 1:05d}"
            if step - 1 > start and not saved:
                checkpoint = _save(run, ckpts, step - 1)
            return TrainResult(Outcome.STOPPED, step - 1, total, checkpoint=checkpoint)
        time.sleep(delay)
        run.progress(step, total, 1.0 / step, config.optimization.learning_rate, delay)
        if interval and step % interval == 0 and step < total:
            checkpoint = _save(run, ckpts, step)
    lora = run.output_dir / "pytorch_lora_weights.safetensors"
    lora.write_text("fake\n")
    checkpoint = _save(run, ckpts, total)
    return TrainResult(Outcome.COMPLETED, total, total, lora_path=lora, checkpoint=checkpoint)
