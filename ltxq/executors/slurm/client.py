"""A small client for Slurm's command-line tools: sbatch, squeue, scontrol, scancel, sinfo.

Torch-free and I/O-free at import. Every call runs one Slurm command with a timeout; anything
that goes wrong becomes an `LtxqError` with a one-line message. Job states come from `scontrol
show job` and `squeue`, never `sacct`: a cluster without accounting (slurmdbd) has no sacct, and
a finished job is known to the controller for `MinJobAge` seconds (300 by default), after which
`job_state` returns None.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path

from ltxq.errors import LtxqError

TIMEOUT_S = 30.0  # a busy slurmctld answers within seconds; past this something is wrong


class JobState(StrEnum):
    """The Slurm job states ltxq acts on (Slurm's own names; the finer ones are folded in)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"

    @property
    def finished(self) -> bool:
        """Return True when the Slurm job will not run again on its own."""
        return self not in (JobState.PENDING, JobState.RUNNING)


# Slurm states outside the closed set, mapped to what they mean for the owner of the job.
# COMPLETING still holds the node (processes being reaped): not finished yet. An unknown state
# reads as RUNNING so that the daemon keeps waiting rather than rerunning a job that may live.
_FOLDED = {
    "CONFIGURING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "SPECIAL_EXIT": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "DEADLINE": JobState.TIMEOUT,
    "REVOKED": JobState.CANCELLED,
}

_UNKNOWN_JOB = "Invalid job id specified"


def parse_state(text: str) -> JobState:
    """Return the JobState for a Slurm state name such as 'CANCELLED by 0' or 'COMPLETING'."""
    word = text.strip().split(" ", 1)[0].rstrip("+").upper()
    try:
        return JobState(word)
    except ValueError:
        return _FOLDED.get(word, JobState.RUNNING)


def available() -> bool:
    """Return True when the Slurm tools are on PATH and a controller answers."""
    if not all(shutil.which(tool) for tool in ("sbatch", "squeue", "scontrol", "scancel", "sinfo")):
        return False
    try:
        _run(["sinfo", "-h", "-o", "%t"], timeout=10)
    except LtxqError:
        return False
    return True


def submit_batch(
    script: str | Path,
    *,
    name: str | None = None,
    partition: str | None = None,
    gpus: int = 0,
    time_limit: str | int | None = None,
    signal: str | None = "B:USR1@60",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    output: Path | None = None,
    workdir: Path | None = None,
) -> str:
    """Submit a batch job and return its Slurm job id.

    SCRIPT is a file (Path) or the script's text (str, starting with '#!'). TIME_LIMIT is in
    minutes or Slurm's 'D-HH:MM:SS' forms. SIGNAL is sbatch's --signal ('B:' = the batch shell
    only, so the script should `exec` the process that handles it); None sends none. ENV adds
    to the environment the job inherits (sbatch exports the submitter's whole environment).
    """
    args = ["sbatch", "--parsable"]
    if name:
        args.append(f"--job-name={name}")
    if partition:
        args.append(f"--partition={partition}")
    if gpus < 0:
        raise LtxqError(f"sbatch: gpus must be 0 or more, not {gpus}")
    if gpus:
        args.append(f"--gres=gpu:{gpus}")
    if time_limit is not None:
        args.append(f"--time={time_limit}")
    if signal:
        args.append(f"--signal={signal}")
    if output is not None:
        args.append(f"--output={output}")
    if workdir is not None:
        args.append(f"--chdir={workdir}")
    args.extend(extra_args)
    stdin: str | None = None
    if isinstance(script, Path):
        if not script.is_file():
            raise LtxqError(f"sbatch: no batch script at {script}")
        args.append(str(script))
    else:
        if not script.startswith("#!"):
            raise LtxqError("sbatch: batch script text must start with '#!' and an interpreter")
        stdin = script
    full_env = {**os.environ, **env} if env else None
    out = _run(args, input=stdin, env=full_env)
    # --parsable prints "ID" or "ID;CLUSTER".
    job_id = out.strip().split(";", 1)[0]
    if not job_id.isdigit():
        raise LtxqError(f"sbatch: unexpected answer {out.strip()!r}")
    return job_id


def job_info(job_id: str | int) -> dict[str, str] | None:
    """Return `scontrol show job`'s fields for JOB_ID, or None when Slurm no longer knows it."""
    try:
        out = _run(["scontrol", "show", "job", "-o", str(job_id)])
    except _UnknownJob:
        return None
    line = out.strip().splitlines()[0] if out.strip() else ""
    if not line:
        return None
    return parse_fields(line)


def job_state(job_id: str | int) -> JobState | None:
    """Return the state of JOB_ID, or None when Slurm no longer knows it (or never did)."""
    info = job_info(job_id)
    if info is None or "JobState" not in info:
        return None
    return parse_state(info["JobState"])


def job_states(job_ids: Sequence[str | int]) -> dict[str, JobState]:
    """Return {job id: state} for the JOB_IDS Slurm still knows, in one squeue call."""
    if not job_ids:
        return {}
    try:
        out = _run(["squeue", "-h", "-t", "all", "-j", ",".join(map(str, job_ids)),
                    "-o", "%i %T"])
    except _UnknownJob:  # squeue says so when the only id asked for is gone
        return {}
    return _id_states(out)


def _id_states(out: str) -> dict[str, JobState]:
    """Parse squeue's "%i %T" lines."""
    found: dict[str, JobState] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            found[parts[0]] = parse_state(parts[1])
    return found


def cancel(job_id: str | int, signal: str | None = None, *, full: bool = False) -> None:
    """Cancel JOB_ID, or with SIGNAL only send it that signal; a finished job is no error.

    A signal goes to the batch shell (the process the batch script `exec`s); FULL sends it to
    the batch shell's children and job steps too.
    """
    args = ["scancel"]
    if signal:
        args += [f"--signal={signal}", "--full" if full else "--batch"]
    args.append(str(job_id))
    with contextlib.suppress(_UnknownJob):
        _run(args)


def release(job_id: str | int) -> None:
    """Let JOB_ID, submitted with `--hold` (e.g. to record its id first), be scheduled."""
    _run(["scontrol", "release", str(job_id)])


def parse_fields(line: str) -> dict[str, str]:
    """Split one `scontrol -o` line of Key=Value pairs (values may contain spaces)."""
    fields: dict[str, str] = {}
    for part in re.split(r"\s+(?=[A-Za-z][\w/:.]*=)", line.strip()):
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value.strip()
    return fields


class _UnknownJob(LtxqError):
    """Slurm answered that the job id is not (or no longer) known."""


def _run(args: list[str], *, input: str | None = None, env: Mapping[str, str] | None = None,
         timeout: float = TIMEOUT_S) -> str:
    """Run one Slurm command and return its stdout; raise LtxqError with one line on failure."""
    tool = args[0]
    try:
        proc = subprocess.run(args, input=input, capture_output=True, text=True, check=False,
                              timeout=timeout, env=dict(env) if env is not None else None)
    except FileNotFoundError:
        raise LtxqError(f"{tool} not found: is Slurm installed and on PATH?") from None
    except subprocess.TimeoutExpired:
        raise LtxqError(f"{tool} did not answer within {timeout:g} s: is slurmctld running?") \
            from None
    if proc.returncode != 0:
        message = _last_error_line(proc.stderr) or f"exit status {proc.returncode}"
        if _UNKNOWN_JOB in proc.stderr:
            raise _UnknownJob(f"{tool}: {message}")
        raise LtxqError(f"{tool} failed: {message}")
    return proc.stdout


def _last_error_line(stderr: str) -> str:
    """Return the most telling line of a Slurm tool's stderr, without the 'tool: error:' prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    return re.sub(r"^\w+: (error: )?", "", lines[-1])
