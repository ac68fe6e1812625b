"""What runs on a Slurm compute node: one ltxq job that a daemon already claimed.

    python -m ltxq.executors.slurm.node --spool DIR --job ID [--trainer MODULE:FUNCTION]
        [--device DEV]

The daemon with `--executor slurm` claims a job and keeps its lock (the job stays in running/,
its Slurm id in [job].slurm_job_id), then submits `batch_script(...)`, which `exec`s this module
so that this process is Slurm's batch shell and gets `--signal=B:USR1@N` itself. Here the job
trains in this process through the daemon's own `JobRun` (same log lines, same cancel check),
and Slurm's warnings (SIGUSR1 ahead of the time limit, SIGTERM on preemption or scancel) become
should_stop(): the trainer saves a checkpoint and returns STOPPED.

This process never writes the job file (the lock holder, the daemon, owns it: a write from here
could re-create a job that was moved meanwhile, or undo the daemon's own changes). It reports
through the job log (progress, "checkpoint step N: PATH", "sample step N: PATH") and a last
stdout line, `ltxq-result {json}`, in the --output file; the daemon reads both once the Slurm
job has ended, and records step, checkpoint and sample as it settles the job. The exit status
(scontrol's ExitCode while Slurm remembers the job) is one of EXIT_* below. Nothing heavy is
imported at module level.
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
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ltxq.errors import JobNotFound, LtxqError
from ltxq.executors.jobrun import JobRun, checkpoint_line, sample_line
from ltxq.executors.kinds import check_after_captions, run_function
from ltxq.executors.local import one_line, resolve_trainer
from ltxq.run import Outcome, TrainResult
from ltxq.spool import Claim, Spool, State

EXIT_COMPLETED = 0    # every step ran; the final LoRA is written
EXIT_FAILED = 1       # training raised; the error is in the job log and the result line
EXIT_USAGE = 2        # bad arguments, or the job file does not validate
EXIT_STOPPED = 3      # stopped by a signal or a cancel request; a checkpoint was saved
EXIT_NOT_OURS = 4     # the job is not running, or belongs to another Slurm job: did nothing
EXIT_NO_TRAINER = 5   # the trainer cannot be loaded on this node: requeue, not the job's fault

RESULT_PREFIX = "ltxq-result "
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

Trainer = Callable[[Any, Any], Any]


class StopFlag:
    """Turns Slurm's signals into a flag; the handler only records, the trainer polls."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def install(self, signals: Sequence[signal.Signals] = STOP_SIGNALS) -> None:
        """Make each of SIGNALS set the flag instead of killing the process."""
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only record: logging or I/O in a signal handler is not safe.
        self.set(signal.Signals(signum).name)

    def set(self, reason: str) -> None:
        """Set the flag, keeping the first REASON (a signal name)."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        """Return True once a stop signal arrived."""
        return self._event.is_set()


class NodeRun(JobRun):
    """The daemon's Run, plus Slurm's signals and a stop once the job leaves running/; it
    records nothing in the job file (the daemon does, from the log and the result line)."""

    def __init__(self, spool: Spool, claim: Claim, device: str | None, stop: StopFlag):
        super().__init__(spool, claim, device, self._slurm_stop)
        self._stop = stop
        self._told = False

    def _slurm_stop(self) -> bool:
        if not self._stop.is_set() and not self._claim.entry.path.exists():
            # Its owner gave it up (recovery, a person): training on would run the job twice.
            self._stop.set("job left running/")
        if self._stop.is_set() and not self._told:
            self._told = True
            self.log(f"{self._stop.reason} on the Slurm node: stopping at a checkpoint")
        return self._stop.is_set()

    def checkpoint_saved(self, path: Path, step: int) -> None:
        """Log the checkpoint; the daemon records it when it settles the job."""
        self.log(checkpoint_line(path, step))

    def sample_written(self, path: Path, step: int) -> None:
        """Log the validation video; the daemon records it when it settles the job."""
        self.log(sample_line(path, step))


def run_job(spool: Spool, job_id: int, stop: StopFlag, *, trainer: Trainer | str | None = None,
            device: str | None = None) -> tuple[int, TrainResult | None, str | None]:
    """Train claimed job JOB_ID in this process; return (exit status, result, error text).

    TRAINER is a function or a "module:function" name (default: $LTXQ_TRAINER or the real one).
    """
    try:
        entry = spool.get(job_id)
    except JobNotFound:
        return EXIT_NOT_OURS, None, f"no job {job_id} in {spool.path}"
    except LtxqError as e:
        return EXIT_USAGE, None, str(e)
    if entry.state is not State.RUNNING:
        return EXIT_NOT_OURS, None, f"job {job_id} is {entry.state}, not running"
    ours = os.environ.get("SLURM_JOB_ID")
    theirs = entry.job.meta.slurm_job_id
    if ours and theirs and theirs != ours:
        # A Slurm job its daemon gave up on (and resubmitted) must not train the job twice.
        return EXIT_NOT_OURS, None, f"job {job_id} belongs to Slurm job {theirs}, not {ours}"
    # The lock is not taken here: the daemon that submitted this Slurm job holds it.
    run = NodeRun(spool, Claim(entry, spool.lock(job_id)), device, stop)
    run.log(f"Slurm job {ours or '-'} started on {socket.gethostname()}:{os.getpid()} "
            f"(device {device or 'auto'}); output {run.output_dir}")
    try:
        train = run_function(entry.job.kind, lambda: trainer if callable(trainer)
                             else resolve_trainer(trainer))  # by kind: executors/kinds.py
    except LtxqError as e:
        run.log(f"{e}; the daemon requeues it")
        return EXIT_NO_TRAINER, None, str(e)
    try:
        check_after_captions(spool, entry.job)
        result = train(entry.job.work, run)
    except Exception as e:  # noqa: BLE001 - the edge: any crash becomes the job's error
        error = one_line(e)
        run.log("failed: " + error)
        for line in traceback.format_exc().rstrip().splitlines():
            run.log("  " + line)
        return EXIT_FAILED, None, error
    if result.outcome == Outcome.COMPLETED:
        run.log(f"Slurm job {ours or '-'} completed at step {result.step}/{result.total_steps}")
        return EXIT_COMPLETED, result, None
    run.log(f"Slurm job {ours or '-'} stopped at step {result.step}/{result.total_steps}"
            f" ({stop.reason or 'cancel requested'})")
    return EXIT_STOPPED, result, None


def result_line(status: int, result: TrainResult | None, error: str | None) -> str:
    """Render the `ltxq-result {json}` line printed last on stdout."""
    doc: dict[str, object] = {"exit": status, "error": error}
    if result is not None:
        doc.update(outcome=str(result.outcome), step=result.step, total_steps=result.total_steps,
                   lora_path=_str(result.lora_path), checkpoint=_str(result.checkpoint),
                   validation_sample=_str(result.validation_sample),
                   peak_memory_gib=getattr(result, "peak_memory_gib", None))
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
                 trainer: str | None = None, device: str | None = None,
                 workdir: Path | None = None) -> str:
    """Return the sbatch script that runs job JOB_ID of SPOOL on the compute node."""
    argv = [str(python or sys.executable), "-m", "ltxq.executors.slurm.node",
            "--spool", str(Path(spool).absolute()), "--job", str(job_id)]
    if trainer:
        argv += ["--trainer", trainer]
    if device:
        argv += ["--device", device]
    lines = ["#!/bin/sh", f"# ltxq job {job_id}: written by the ltxq daemon, run by Slurm."]
    if workdir is not None:
        lines.append(f"cd {shlex.quote(str(workdir))} || exit {EXIT_USAGE}")
    # exec: this Python becomes the batch shell, so `--signal=B:...` reaches the trainer.
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one claimed job on this node; return the exit status (EXIT_*)."""
    parser = argparse.ArgumentParser(
        prog="python -m ltxq.executors.slurm.node",
        description="Run one claimed ltxq job on a Slurm compute node (started by the daemon).")
    parser.add_argument("--spool", type=Path, required=True, help="the shared spool folder")
    parser.add_argument("--job", type=int, required=True, help="the ltxq job id")
    parser.add_argument("--trainer", default=None,
                        help="module:function (default: $LTXQ_TRAINER or ltxq.trainer:train)")
    parser.add_argument("--device", default=None, help="torch device (default: best available)")
    args = parser.parse_args(argv)
    stop = StopFlag()
    stop.install()  # before anything slow, so an early signal is not lost
    if not (args.spool / "running").is_dir():
        # Spool() would create a fresh, empty spool at a mistyped (or unshared) path.
        error = f"no spool at {args.spool} (is it on storage this node sees?)"
        print(f"ltxq: job {args.job}: {error}", file=sys.stderr)
        print(result_line(EXIT_USAGE, None, error), flush=True)
        return EXIT_USAGE
    status, result, error = run_job(Spool(args.spool), args.job, stop, trainer=args.trainer,
                                    device=args.device)
    if error:
        print(f"ltxq: job {args.job}: {error}", file=sys.stderr)
    print(result_line(status, result, error), flush=True)
    return status


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


if __name__ == "__main__":
    sys.exit(main())
