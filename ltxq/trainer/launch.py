"""Data-parallel jobs: launch N ranks with torchrun and stay their owner. No torch here.

`train_ranks` is `train` for `resources.processes > 1`, run in the calling (daemon) process.
It talks to the ranks through a control folder, `OUTPUT_DIR/.ranks/`:

    config.toml, launch.json   what to train, where, on which device (written before launch)
    owner.lock                 flock held by the owner while it wants the ranks alive; a rank
                               that can take it knows its owner died and exits without writing
    stop                       created when run.should_stop(): the ranks agree on the next step
    events.jsonl               rank 0's progress, log lines, checkpoints, samples and result
    rank<N>.pid, rank<N>.json  each rank's pid, and how it ended (ok, error, terminated)
    torchrun.log               torchrun's and the ranks' stdout and stderr

The folder is removed after a run that ended well and kept after a failure (its log is the
post-mortem); the next launch starts it afresh. If a rank dies, torchrun stops the others and
`train_ranks` raises TrainingError naming it; rank 0 writes checkpoints exactly as one process
does, so the job resumes from its newest one, with any number of ranks.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

import ltxq
from ltxq.config import TrainingConfig, config_to_dict
from ltxq.errors import TrainingError
from ltxq.run import Outcome, Run, TrainResult

CONTROL_DIR = ".ranks"
POLL_S = 0.1                 # how often the owner reads events and relays should_stop()
TERMINATE_GRACE_S = 30.0     # torchrun's own shutdown of its workers fits in this
EXIT_ORPHANED = 3            # a rank's exit status once its owner is gone
_LOG_TAIL = 15               # lines of torchrun.log copied into the job log on failure


@dataclass(frozen=True)
class Control:
    """The control folder of one launch (see the module docstring)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def launch(self) -> Path:
        return self.path / "launch.json"

    @property
    def owner_lock(self) -> Path:
        return self.path / "owner.lock"

    @property
    def stop(self) -> Path:
        return self.path / "stop"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "torchrun.log"

    def pid_file(self, rank: int) -> Path:
        return self.path / f"rank{rank}.pid"

    def status_file(self, rank: int) -> Path:
        return self.path / f"rank{rank}.json"

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        """Write DATA to PATH atomically (readers never see half of it)."""
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def status(self, rank: int) -> dict[str, Any] | None:
        """Return how RANK ended, or None if it left no word (killed, or never started)."""
        try:
            return json.loads(self.status_file(rank).read_text())
        except (FileNotFoundError, ValueError):
            return None


def train_ranks(config: TrainingConfig, run: Run) -> TrainResult:
    """Train CONFIG over config.resources.processes ranks; relay stops, forward rank 0's reports.

    Returns rank 0's result once every rank has ended at the same step; raises TrainingError
    if a rank failed or died (the others are stopped first, and none is left running).
    """
    count = config.resources.processes
    output_dir = Path(run.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    control = Control(output_dir / CONTROL_DIR)
    shutil.rmtree(control.path, ignore_errors=True)  # a previous launch's, all ranks gone
    control.path.mkdir()
    control.config.write_text(tomli_w.dumps(config_to_dict(config)))
    control.write_json(control.launch, {"output_dir": str(output_dir), "device": run.device,
                                        "job_id": run.job_id})
    _free_warm_model()
    lock = _OwnerLock(control.owner_lock)
    try:
        proc = _start(control, count)
        try:
            result = _supervise(proc, control, run)
        except BaseException:  # the owner is going down (a bug, a second Ctrl-C): so are they
            lock.release()
            _terminate(proc)
            _reap(control, count)
            raise
    finally:
        lock.release()
    return _conclude(proc.returncode, result, control, run, count)


# --- launching and supervising ------------------------------------------------------------


class _OwnerLock:
    """The flock that tells the ranks their owner wants them alive (the kernel drops it
    when this process dies, even by kill -9)."""

    def __init__(self, path: Path) -> None:
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        """Drop the lock: every rank still running exits at its next step."""
        if self._fd is not None:
            os.close(self._fd)  # the only descriptor: closing it releases the flock
            self._fd = None


def _free_warm_model() -> None:
    """Drop the model an earlier one-process job left loaded here: rank 0 needs its GPU."""
    warm = sys.modules.get("ltxq.trainer.warm")
    if warm is None:
        return  # never loaded in this process (and torch need not be imported to know)
    warm.clear()
    torch = sys.modules["torch"]
    if torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def _start(control: Control, count: int) -> subprocess.Popen:
    env = dict(os.environ)
    # The ranks import the same ltxq as this process, installed or not.
    package_root = str(Path(ltxq.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # torchrun would set 1; share the cores instead (matters for CPU ranks).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // count)))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(count), "--max_restarts", "0",
               "--monitor_interval", "0.2", "-m", "ltxq.trainer.rank_main", str(control.path)]
    with open(control.log, "ab") as log:
        # A session of its own: a Ctrl-C meant for the owner reaches the ranks as a stop
        # request through the control folder, not as a signal that kills them mid-step.
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _supervise(proc: subprocess.Popen, control: Control, run: Run) -> dict[str, Any] | None:
    """Forward events and relay a stop until torchrun exits; return rank 0's result event."""
    events = _EventReader(control.events)
    result = None
    stopping = False
    while True:
        done = proc.poll() is not None
        for event in events.read():  # after poll(): nothing written before the exit is missed
            result = _forward(event, run) or result
        if done:
            return result
        if not stopping and run.should_stop():
            stopping = True
            control.stop.touch()
        time.sleep(POLL_S)


def _forward(event: dict[str, Any], run: Run) -> dict[str, Any] | None:
    kind = event.get("event")
    if kind == "progress":
        run.progress(event["step"], event["total"], event["loss"], event["lr"],
                     event["seconds_per_step"])
    elif kind == "log":
        run.log(event["message"])
    elif kind == "checkpoint":
        run.checkpoint_saved(Path(event["path"]), event["step"])
    elif kind == "sample":
        run.sample_written(Path(event["path"]), event["step"])
    elif kind == "result":
        return event
    return None


class _EventReader:
    """Reads the complete JSON lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def _terminate(proc: subprocess.Popen) -> None:
    """Stop torchrun (it stops its workers), forcefully if it takes too long."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _reap(control: Control, count: int) -> None:
    """Make sure no rank of this launch outlives it (torchrun may have been killed)."""
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for rank in range(count):
        pid = _rank_pid(control, rank)
        while pid is not None and _alive_rank(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(POLL_S)


def _rank_pid(control: Control, rank: int) -> int | None:
    try:
        return int(control.pid_file(rank).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _alive_rank(pid: int) -> bool:
    """Tell whether PID is still a running rank (not a zombie, not a reused pid)."""
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        if not Path("/proc/self").exists():  # no procfs: ask the kernel
            try:
                os.kill(pid, 0)
                return True
            except OSError:
                return False
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and b"ltxq.trainer.rank_main" in cmdline


# --- the verdict ----------------------------------------------------------------------------


def _conclude(returncode: int, result: dict[str, Any] | None, control: Control, run: Run,
              count: int) -> TrainResult:
    """Turn the ranks' end into rank 0's TrainResult, or a TrainingError that says why."""
    _reap(control, count)
    statuses = {rank: control.status(rank) for rank in range(count)}
    if returncode == 0 and result is not None and all(
            s is not None and s["state"] == "ok" for s in statuses.values()):
        steps = {s["step"] for s in statuses.values()}
        if len(steps) > 1:
            raise TrainingError(f"the ranks ended at different steps {sorted(steps)}; "
                                f"see {control.log}")
        run.log(f"{count} ranks ended at step {result['step']} ({result['outcome']})")
        shutil.rmtree(control.path, ignore_errors=True)
        return TrainResult(outcome=Outcome(result["outcome"]), step=result["step"],
                           total_steps=result["total_steps"],
                           lora_path=_path(result.get("lora_path")),
                           checkpoint=_path(result.get("checkpoint")),
                           validation_sample=_path(result.get("validation_sample")),
                           peak_memory_gib=_peak(result.get("peak_memory_gib")))
    for line in _tail(control.log, _LOG_TAIL):
        run.log(f"  {line}")
    raise TrainingError(f"{_failure(returncode, statuses, control)}; see {control.log}")


def _peak(value: Any) -> float | None:
    """Return rank 0's reported peak memory (GiB) when it is a sane number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1e6
    return float(value) if ok else None


def _failure(returncode: int, statuses: dict[int, dict[str, Any] | None],
             control: Control) -> str:
    """Say which rank failed first and how: a user error, a death, or a crash."""
    for status in statuses.values():
        if status is not None and status["state"] == "training_error":
            return status["message"]  # the user's to fix, the same on every rank
    report = _torchrun_failures(control.log)
    # A rank that left no word died abruptly (kill -9, OOM killer); its peers' errors
    # ("connection closed by peer") and terminations follow from that.
    for rank, status in statuses.items():
        if status is None and _rank_pid(control, rank) is not None:
            return f"rank {rank} of {len(statuses)} died ({_how(report.get(rank))})"
    for rank, status in statuses.items():
        if status is not None and status["state"] == "error":
            return f"rank {rank} of {len(statuses)} failed: {status['message']}"
    for rank, status in statuses.items():
        if status is not None and status["state"] == "orphaned":
            return f"rank {rank} of {len(statuses)} lost its owner"
    return f"the ranks failed (torchrun exit status {returncode})"


_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*exitcode\s*:\s*(-?\d+)")


def _torchrun_failures(log: Path) -> dict[int, int]:
    """Return {rank: exit code} from torchrun's failure report in LOG."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    return {int(m.group(1)): int(m.group(2)) for m in _FAILURE.finditer(text)}


def _how(code: int | None) -> str:
    if code is None:
        return "no exit status reported"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
