"""The one daemon loop with real processes: hooks for every finished job, trusted hooks only,
wake-up on spool changes, hand-dropped files under --exit-when-idle, a deleted lock file."""

from __future__ import annotations

import os
import shutil
import signal
import time

from conftest import wait_for

from ltxq.spool import Spool

HOOK = 'echo "$LTXQ_JOB_ID $LTXQ_JOB_STATE" >> "$LTXQ_SPOOL/../hooks.txt"'
NOBODY = 65534


def hooks(env) -> list[tuple[int, str]]:
    path = env.root / "hooks.txt"
    if not path.exists():
        return []
    return sorted((int(a), b) for a, b in (line.split() for line in path.read_text().splitlines()))


def one_folder_each(env) -> None:
    """Assert that every job file name is in exactly one state folder."""
    seen: dict[str, list[str]] = {}
    for state in ("pending", "running", "done", "failed", "cancelled"):
        for name in os.listdir(env.spool / state):
            seen.setdefault(name, []).append(state)
    assert {n: s for n, s in seen.items() if len(s) != 1} == {}


def test_on_finish_runs_for_recovery_and_dependency_failures(env):
    (env.dataset / "SLOW").write_text("0.05")
    env.config(steps=400, interval=5, extra="[job]\nmax_attempts = 1\n")
    doomed = env.submit("job.toml")
    child = env.submit("job.toml", "--after", str(doomed))
    first = env.daemon()
    wait_for(lambda: env.job(doomed)["checkpoint"], what="a checkpoint")
    first.send_signal(signal.SIGKILL)          # its daemon dies: recovery fails the job
    first.wait(timeout=10)
    second = env.daemon("--exit-when-idle", "--on-finish", HOOK)
    assert second.wait(timeout=60) == 0, second.stderr.read()
    job = env.job(doomed)
    assert job["state"] == "failed" and "interrupted 1 times" in job["error"]
    assert env.job(child)["error"] == f"dependency {doomed} failed"
    assert hooks(env) == [(doomed, "failed"), (child, "failed")]
    one_folder_each(env)


def test_job_file_on_finish_runs_only_from_files_of_the_daemons_uid(env):
    env.config(steps=1)
    mine = env.submit("job.toml", "--on-finish", "touch mine.ran")
    theirs = env.submit("job.toml", "--on-finish", "touch theirs.ran")
    os.chown(env.spool / "pending" / f"{theirs:06d}.toml", NOBODY, NOBODY)
    d = env.daemon("--exit-when-idle", "--on-finish", HOOK)
    assert d.wait(timeout=60) == 0, d.stderr.read()
    assert (env.root / "mine.ran").exists() and not (env.root / "theirs.ran").exists()
    log = env.run("logs", str(theirs)).stdout
    assert (f"on_finish skipped: the job file was written by uid {NOBODY}, not this daemon's uid "
            f"{os.geteuid()}") in log
    assert hooks(env) == [(mine, "done"), (theirs, "done")]  # the daemon's own hook always runs


def test_a_submit_wakes_an_idle_daemon_long_before_its_poll(env):
    env.config(steps=1)
    d = env.daemon("--poll", "60")             # the last --poll wins over the helper's 0.1
    time.sleep(1.0)                            # idle, asleep in its poll
    for _ in range(3):
        job_id = env.submit("job.toml")
        env.wait_state(job_id, "done", timeout=20)
    env.run("pause")
    job_id = env.submit("job.toml")
    time.sleep(0.5)
    assert env.state(job_id) == "pending"
    env.run("unpause")                         # a removal in control/ wakes it too
    env.wait_state(job_id, "done", timeout=20)
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=10) == 0


def test_exit_when_idle_waits_for_a_hand_dropped_file_to_settle(env):
    env.config(steps=2)
    Spool(env.spool).create()
    shutil.copy(env.root / "job.toml", env.spool / "pending" / "x.toml")
    d = env.daemon("--exit-when-idle")
    assert d.wait(timeout=60) == 0, d.stderr.read()
    (job,) = env.status()
    assert job["state"] == "done" and job["name"] == "x"


def test_a_deleted_lock_file_stops_the_job_without_an_attempt(env):
    (env.dataset / "SLOW").write_text("0.05")
    env.config(steps=2000, interval=5)
    job_id = env.submit("job.toml")
    d = env.daemon("--once")
    wait_for(lambda: env.job(job_id)["checkpoint"], what="a checkpoint")
    shutil.rmtree(env.spool / "locks")         # what a careless cleanup does
    assert d.wait(timeout=30) == 0, d.stderr.read()
    log = env.run("logs", str(job_id)).stdout
    assert (f"lock file locks/{job_id:06d}.lock was deleted; stopping so that the job never "
            "runs twice") in log
    job = env.job(job_id)
    assert job["state"] == "pending" and job["attempts"] == 0 and job["checkpoint"]
    one_folder_each(env)
