"""One table of endings, driven through both executors by real daemons: what each ending makes
of the job (state, attempts), that on_finish ran for every finished job, and that every job id
is in exactly one state folder after each step.

local: the fake trainer in the daemon's process. slurm: the same trainer on the loopback
cluster that ci/slurm/up starts (skipped, saying why, without one).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Env, node_pid, wait_for

HOOK = 'echo "$LTXQ_JOB_ID $LTXQ_JOB_STATE" >> "$LTXQ_SPOOL/../hooks.txt"'
SLURM = ("--executor", "slurm", "--poll", "0.2", "--warn-before", "30")


class Harness:
    """Run daemons of one executor over ENV and make its runs end in each way."""

    def __init__(self, env: Env, executor: str):
        self.env = env
        self.executor = executor

    def daemon(self, *args: str):
        extra = SLURM if self.executor == "slurm" else ()
        return self.env.daemon(*extra, "--on-finish", HOOK, *args)

    def shutdown(self, job_id: int, daemon) -> None:
        """Stop the run at a checkpoint, not by the job's choice: SIGTERM to the local daemon;
        what preemption does on Slurm (scancel: SIGTERM to the node)."""
        if self.executor == "slurm":
            from ltxq.executors.slurm import client
            client.cancel(self.env.job(job_id)["slurm_job_id"])
        else:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0

    def kill(self, job_id: int, daemon) -> None:
        """Kill the process that trains, leaving no result: the daemon, or the Slurm node."""
        if self.executor == "slurm":
            os.kill(wait_for(lambda: node_pid(self.env.spool, job_id), 60, "the node"),
                    signal.SIGKILL)
        else:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=10)


@dataclass(frozen=True)
class Case:
    name: str
    act: Callable[[Harness, int, object], None] | None  # what happens mid-run (None: nothing)
    ending: str                                          # the state the run's ending makes
    attempts: int
    then: str                                            # the state once a daemon goes on


def _cancel(h: Harness, job_id: int, daemon) -> None:
    h.env.run("cancel", str(job_id))


CASES = [
    Case("completed", None, "done", 0, "done"),
    Case("failed", None, "failed", 0, "failed"),
    Case("stopped-by-shutdown", Harness.shutdown, "pending", 0, "done"),
    Case("stopped-with-cancel", _cancel, "cancelled", 0, "cancelled"),
    Case("died", Harness.kill, "pending", 1, "done"),
]


@pytest.fixture(params=["local", "slurm"])
def harness(request, tmp_path: Path):
    if request.param == "slurm":
        from test_slurm import _cluster_reason
        reason = _cluster_reason()
        if reason:
            pytest.skip(reason)
    env = Env(tmp_path)
    env.outputs.mkdir()
    yield Harness(env, request.param)
    env.stop_all()
    if request.param == "slurm":
        from ltxq.executors.slurm import client
        from ltxq.spool import Spool
        for entry in Spool(env.spool).jobs():
            if entry.job.meta.slurm_job_id:
                client.cancel(entry.job.meta.slurm_job_id)


def _one_folder_each(env: Env) -> None:
    seen: dict[str, list[str]] = {}
    for state in ("pending", "running", "done", "failed", "cancelled"):
        for name in os.listdir(env.spool / state):
            seen.setdefault(name, []).append(state)
    assert {n: s for n, s in seen.items() if len(s) != 1} == {}


def _hooks(env: Env) -> list[str]:
    path = env.root / "hooks.txt"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def _job_is(env: Env, job_id: int, state: str, attempts: int) -> dict | None:
    job = env.job(job_id)
    return job if job["state"] == state and job["attempts"] == attempts else None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_executor_settles_each_ending_alike(harness: Harness, case: Case) -> None:
    env = harness.env
    if case.name == "failed":
        env.failing_config("job.toml", error="the data is cursed", steps=3)
    else:
        if case.act is not None:
            (env.dataset / "SLOW").write_text("0.05")
        env.config(steps=4000 if case.act else 3, interval=5 if case.act else 0)
    job_id = env.submit("job.toml")
    daemon = harness.daemon()
    if case.act is not None:
        wait_for(lambda: (env.job(job_id)["step"] or 0) >= 3, 120, "training")
        _one_folder_each(env)
        env.run("pause")                             # so the ending's state stays to be seen
        (env.dataset / "SLOW").write_text("0.001")   # the rerun, if any, ends soon
        case.act(harness, job_id, daemon)
        if daemon.poll() is not None:
            daemon = harness.daemon()                # it recovers (local died), claims nothing
    job = wait_for(lambda: _job_is(env, job_id, case.ending, case.attempts), 120,
                   f"the job to be {case.ending} after {case.attempts} attempt(s)")
    _one_folder_each(env)
    if case.ending == "pending":
        assert job["checkpoint"] and _hooks(env) == []
        env.run("unpause")                           # a daemon goes on with the job
    final = wait_for(lambda: _job_is(env, job_id, case.then, case.attempts), 120,
                     f"the job to be {case.then}")
    wait_for(lambda: _hooks(env), 30, "the on_finish hook")
    assert _hooks(env) == [f"{job_id} {case.then}"]
    if case.name == "failed":
        assert final["error"] == "the data is cursed"
    _one_folder_each(env)
