"""One rank of a data-parallel job: `python -m ltxq.trainer.rank_main CONTROL_DIR`, under torchrun.

It trains with the same `loop.train` as a single process, placed by `ProcessGroupRanks`;
its `Run` checks the control folder for a stop request and an owner that went away, and
rank 0's reports go to `events.jsonl` for the owner to forward (see launch.py). Every rank
records how it ended in `rank<N>.json`, so the owner can tell the rank that died first from
the peers that failed because of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from ltxq import tomlread
from ltxq.config import parse_config
from ltxq.errors import TrainingError
from ltxq.run import TrainResult
from ltxq.trainer.launch import EXIT_ORPHANED, Control


class Terminated(BaseException):
    """torchrun (or someone) sent SIGTERM: a peer failed, or the launch is being stopped."""


class RankRun:
    """The `Run` of one rank: stop requests from the control folder, reports from rank 0 only."""

    def __init__(self, control: Control, rank: int, output_dir: Path, device: str,
                 job_id: int | None) -> None:
        self.job_id = job_id
        self.job_key = None  # the owner process took the folder before starting the ranks
        self.output_dir = output_dir
        self.device = device
        self.rank = rank
        self._control = control
        self._owner = os.open(control.owner_lock, os.O_RDONLY)
        self._events = (os.open(control.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                        if rank == 0 else None)

    def should_stop(self) -> bool:
        """Return True once the owner asked for a stop; exit at once if the owner is gone."""
        try:
            fcntl.flock(self._owner, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the owner is alive and wants us to go on
        else:
            # The job is the next owner's now (recovery may have started it again): write
            # nothing more, not even a checkpoint.
            _write_status(self._control, self.rank, "orphaned")
            os._exit(EXIT_ORPHANED)
        return self._control.stop.exists()

    def progress(self, step: int, total: int, loss: float, lr: float,
                 seconds_per_step: float) -> None:
        self._emit(event="progress", step=step, total=total, loss=loss, lr=lr,
                   seconds_per_step=seconds_per_step)

    def log(self, message: str) -> None:
        self._emit(event="log", message=message)

    def checkpoint_saved(self, path: Path, step: int) -> None:
        self._emit(event="checkpoint", path=str(path), step=step)

    def sample_written(self, path: Path, step: int) -> None:
        self._emit(event="sample", path=str(path), step=step)

    def result(self, result: TrainResult) -> None:
        """Report rank 0's result to the owner."""
        self._emit(event="result", outcome=str(result.outcome), step=result.step,
                   total_steps=result.total_steps,
                   **{k: str(v) if v is not None else None for k, v in (
                       ("lora_path", result.lora_path), ("checkpoint", result.checkpoint),
                       ("validation_sample", result.validation_sample))},
                   peak_memory_gib=result.peak_memory_gib)

    def _emit(self, **event: Any) -> None:
        if self._events is not None:
            # One write of one line to an O_APPEND file: the owner reads whole lines.
            os.write(self._events, (json.dumps(event) + "\n").encode())


def main(argv: list[str]) -> int:
    """Train this rank; return its exit status (the reason is in its status file)."""
    control = Control(Path(argv[0]))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    count = int(os.environ["WORLD_SIZE"])
    control.pid_file(rank).write_text(str(os.getpid()))
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = _train(control, rank, local_rank, count)
    except Terminated:
        _write_status(control, rank, "terminated")
        return 143
    except TrainingError as e:
        _write_status(control, rank, "training_error", message=str(e))
        return 1
    except Exception as e:  # noqa: BLE001 - a bug: recorded for the owner, traceback in the log
        traceback.print_exc()
        _write_status(control, rank, "error", message=f"{type(e).__name__}: {e}")
        return 1
    _write_status(control, rank, "ok", step=result.step, outcome=str(result.outcome))
    return 0


def _train(control: Control, rank: int, local_rank: int, count: int) -> TrainResult:
    # Heavy imports here, after the pid file: torchrun may stop us while they load.
    from ltxq.trainer.distributed import ProcessGroupRanks, rank_device
    from ltxq.trainer.loop import train

    spec = json.loads(control.launch.read_text())
    config = parse_config(tomlread.loads(control.config.read_text()))
    device = rank_device(spec["device"], local_rank, count)
    run = RankRun(control, rank, Path(spec["output_dir"]), str(device), spec["job_id"])
    ranks = ProcessGroupRanks.start(device)
    result = train(config, run, ranks)
    if rank == 0:
        run.result(result)
    ranks.close()
    return result


def _on_sigterm(signum: int, frame: object) -> None:
    # Not just a flag: torchrun sends this when a peer failed, and the rank must end now
    # rather than at its next step; the exception unwinds it as KeyboardInterrupt would,
    # and its status file says "terminated" (a follower, not the cause).
    raise Terminated


def _write_status(control: Control, rank: int, state: str, **details: Any) -> None:
    control.write_json(control.status_file(rank), {"state": state, **details})


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a process group whose peer died can hang in its destructors.
    os._exit(code)
