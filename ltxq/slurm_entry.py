"""What runs on a Slurm compute node: one ltxq job that a daemon already claimed.

    python -m ltxq.slurm_entry --spool DIR --job ID

The daemon with `--executor slurm` claims a job (it stays in running/, with its Slurm job id in
[job].slurm_job_id) and submits `batch_script(...)`, which `exec`s this module so that this
process is Slurm's batch shell and receives `--signal=B:USR1@N` itself. Here the job is trained
in this process, and Slurm's warnings (SIGUSR1 ahead of the time limit, SIGTERM on preemption,
scancel or the limit itself) become `should_stop()`: the trainer saves a checkpoint and returns
STOPPED, and the daemon puts the job back in pending/ to resume.

How it ended is told three ways, so the daemon need not parse anything it does not want to:
- the exit status (also scontrol's ExitCode while Slurm remembers the job): EXIT_* below;
- the last stdout line (Slurm's --output file): `ltxq-result {json}` with the TrainResult;
- the job log, spool/logs/<id>.log, as for a job the daemon runs itself.

NOTE for the daemon: this module calls `ltxq.trainer.train(config, run)` with its own small Run
(`EntryRun`). Once ltxq/daemon.py exposes a function that runs one already-claimed job in this
process, `run_job` should call it instead, passing `StopFlag.is_set` as the extra stop check, so
the log format and the running → done/failed/cancelled/pending moves live in one place.
Nothing heavy is imported at module level: the daemon imports `batch_script` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

from ltxq.errors import LtxqError
from ltxq.run import Outcome, TrainResult

EXIT_COMPLETED = 0    # every step ran; the final LoRA is written
EXIT_FAILED = 1       # training raised; the error is in the job log and the result line
EXIT_USAGE = 2        # bad arguments, or the job file does not validate
EXIT_STOPPED = 3      # stopped on a signal or a cancel request; a checkpoint was saved
EXIT_NOT_OURS = 4     # the job is not in running/ (or belongs to another Slurm job): did nothing

RESULT_PREFIX = "ltxq-result "
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

TrainFn = Callable[..., TrainResult]


class StopFlag:
    """Turns Slurm's signals into a flag; the handler only records, the trainer polls."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def install(self, signals: Sequence[signal.Signals] = STOP_SIGNALS) -> None:
        """Make each of SIGNALS set the flag instead of killing the process."""
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only record: logging or I/O in a signal handler is not safe.
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        self._event.set()

    def set(self, reason: str) -> None:
        """Set the flag without a signal (tests, or a caller with its own reason)."""
        if self.signal_name is None:
            self.signal_name = reason
        self._event.set()

    def is_set(self) -> bool:
        """Return True once a stop signal arrived."""
        return self._event.is_set()


@dataclass
class EntryRun:
    """The Run the trainer gets on a compute node: job log, cancel file, Slurm's signals."""

    job_id: int | None
    output_dir: Path
    device: str | None
    log_path: Path
    cancel_path: Path
    stop: StopFlag
    _stop_logged: bool = field(default=False, repr=False)

    def should_stop(self) -> bool:
        """Return True after a Slurm signal or once `ltxq cancel` wrote the cancel file."""
        if self.stop.is_set():
            if not self._stop_logged:
                self._stop_logged = True
                self.log(f"received {self.stop.signal_name} from Slurm: stopping at a checkpoint")
            return True
        return self.cancel_path.exists()

    def progress(self, step: int, total: int, loss: float, lr: float,
                 seconds_per_step: float) -> None:
        """Append a progress line to the job log."""
        self.log(f"step {step}/{total} loss {loss:.6g} lr {lr:.3g} "
                 f"{seconds_per_step:.3f} s/step")

    def log(self, message: str) -> None:
        """Append MESSAGE to the job log, one line, with a UTC timestamp."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{stamp} {' '.join(message.splitlines())}\n"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(line)

    def checkpoint_saved(self, path: Path, step: int) -> None:
        """Record a complete checkpoint in the job log."""
        self.log(f"checkpoint step {step} saved: {path}")

    def sample_written(self, path: Path, step: int) -> None:
        """Record a validation video in the job log."""
        self.log(f"sample step {step} written: {path}")


def find_running(spool: Path, job_id: int) -> Path | None:
    """Return the job's file in SPOOL/running/ (names may be zero-padded), or None."""
    running = spool / "running"
    for name in (f"{job_id}.toml", f"{job_id:06d}.toml"):
        if (running / name).is_file():
            return running / name
    try:
        entries = list(running.iterdir())
    except FileNotFoundError:
        return None
    for path in entries:
        if path.suffix == ".toml" and path.stem.isdigit() and int(path.stem) == job_id:
            return path
    return None


def run_job(spool: Path, job_id: int, stop: StopFlag, *, train: TrainFn | None = None,
            device: str | None = None) -> tuple[int, TrainResult | None, str | None]:
    """Train one claimed job here; return (exit status, result, error text)."""
    from ltxq.job import parse_job  # cheap, but only needed here

    path = find_running(spool, job_id)
    if path is None:
        return EXIT_NOT_OURS, None, f"job {job_id} is not in {spool / 'running'}"
    try:
        job = parse_job(path.read_bytes(), file=path)
    except FileNotFoundError:
        # The daemon moved it (cancel, recovery) between our look and our read.
        return EXIT_NOT_OURS, None, f"job {job_id} left {spool / 'running'}"
    except LtxqError as e:
        return EXIT_USAGE, None, str(e)
    ours = os.environ.get("SLURM_JOB_ID")
    if ours and job.meta.slurm_job_id and job.meta.slurm_job_id != ours:
        # A Slurm job the daemon gave up on (and resubmitted) must not train the job twice.
        return EXIT_NOT_OURS, None, (f"job {job_id} belongs to Slurm job {job.meta.slurm_job_id}, "
                                     f"not {ours}")
    run = EntryRun(
        job_id=job_id,
        output_dir=job.output_dir(),
        device=device or job.meta.device,
        log_path=spool / "logs" / f"{job_id}.log",
        cancel_path=spool / "control" / f"{job_id}.cancel",
        stop=stop,
    )
    where = f"{socket.gethostname()}:{os.getpid()}"
    run.log(f"started on {where} (Slurm job {ours or '-'})")
    try:
        result = (train or _load_trainer())(job.config, run)
    except LtxqError as e:
        run.log(f"failed: {e}")
        return EXIT_FAILED, None, str(e)
    except Exception as e:  # noqa: BLE001 - the edge: any crash becomes the job's error
        text = f"{type(e).__name__}: {e}"
        run.log(f"failed: {text}")
        return EXIT_FAILED, None, text
    if result.outcome == Outcome.COMPLETED:
        run.log(f"completed at step {result.step}/{result.total_steps}")
        return EXIT_COMPLETED, result, None
    run.log(f"stopped at step {result.step}/{result.total_steps}, checkpoint {result.checkpoint}")
    return EXIT_STOPPED, result, None


def result_line(status: int, result: TrainResult | None, error: str | None) -> str:
    """Render the `ltxq-result {json}` line printed last on stdout."""
    doc: dict[str, object] = {"exit": status, "error": error}
    if result is not None:
        doc.update(outcome=str(result.outcome), step=result.step, total_steps=result.total_steps,
                   lora_path=_str(result.lora_path), checkpoint=_str(result.checkpoint),
                   validation_sample=_str(result.validation_sample))
    return RESULT_PREFIX + json.dumps(doc, sort_keys=True)


def parse_result_line(text: str) -> dict[str, object] | None:
    """Return the last `ltxq-result` document in TEXT (a Slurm output file), or None."""
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                doc = json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                return None
            return doc if isinstance(doc, dict) else None
    return None


def batch_script(spool: Path, job_id: int, *, python: Path | None = None,
                 workdir: Path | None = None, device: str | None = None) -> str:
    """Return the sbatch script that runs job JOB_ID of SPOOL on the compute node."""
    py = python or Path(sys.executable)
    argv = [str(py), "-m", "ltxq.slurm_entry", "--spool", str(spool.resolve()),
            "--job", str(job_id)]
    if device:
        argv += ["--device", device]
    lines = ["#!/bin/sh", f"# ltxq job {job_id}: written by the ltxq daemon, run by Slurm."]
    if workdir is not None:
        lines.append(f"cd {shlex.quote(str(workdir))} || exit {EXIT_USAGE}")
    # exec: this Python becomes the batch shell, so `--signal=B:...` reaches the trainer.
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, *, train: TrainFn | None = None) -> int:
    """Run one claimed job on this node; return the exit status (EXIT_*)."""
    parser = argparse.ArgumentParser(
        prog="python -m ltxq.slurm_entry",
        description="Run one claimed ltxq job on a Slurm compute node.")
    parser.add_argument("--spool", type=Path, required=True, help="the shared spool folder")
    parser.add_argument("--job", type=int, required=True, help="the ltxq job id")
    parser.add_argument("--device", default=None, help="torch device (default: best available)")
    args = parser.parse_args(argv)
    stop = StopFlag()
    stop.install()  # before anything slow, so an early signal is not lost
    status, result, error = run_job(args.spool, args.job, stop, train=train, device=args.device)
    if error:
        print(f"ltxq: job {args.job}: {error}", file=sys.stderr)
    print(result_line(status, result, error), flush=True)
    return status


def _load_trainer() -> TrainFn:
    from ltxq.trainer import train  # heavy: torch loads here, on the compute node only
    return train


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


if __name__ == "__main__":
    sys.exit(main())
