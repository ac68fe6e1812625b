"""Real daemon processes over a real spool, driven by the fake trainer."""

from __future__ import annotations

import collections
import os
import signal
import time

from conftest import wait_for

from ltxq.spool import Spool


def test_several_daemons_run_each_job_exactly_once(env):
    env.config(steps=3)
    ids = [int(x) for x in env.run("submit", *["job.toml"] * 24).stdout.split()]
    assert ids == list(range(1, 25))
    daemons = [env.daemon("--exit-when-idle") for _ in range(3)]
    for d in daemons:
        assert d.wait(timeout=60) == 0, d.stderr.read()
    starts = collections.Counter(job_id for job_id, _ in env.ran())
    assert sorted(starts) == ids and set(starts.values()) == {1}
    jobs = env.status()
    assert {j["state"] for j in jobs} == {"done"}
    assert {j["step"] for j in jobs} == {3}


def test_kill_9_mid_job_is_recovered_and_resumes_from_its_checkpoint(env):
    (env.dataset / "SLOW").write_text("0.05")
    env.config(steps=400, interval=5)
    job_id = env.submit("job.toml")
    first = env.daemon()
    wait_for(lambda: env.job(job_id)["checkpoint"], what="a checkpoint")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    job = env.job(job_id)
    assert job["state"] == "running"  # nobody has looked yet
    checkpoint_step = int(job["checkpoint"].rsplit("_", 1)[1])
    (env.dataset / "SLOW").write_text("0.001")
    second = env.daemon("--exit-when-idle")
    assert second.wait(timeout=60) == 0
    job = env.job(job_id)
    assert job["state"] == "done" and job["attempts"] == 1 and job["step"] == 400
    (a, b) = env.ran()
    # The newest checkpoint on disk (one may have landed just before the kill's instant).
    assert a == (job_id, 0) and b[0] == job_id and checkpoint_step <= b[1] <= checkpoint_step + 5
    assert "recovered" in env.run("logs", str(job_id)).stdout


def test_sigterm_checkpoints_requeues_without_an_attempt_and_exits_0(env):
    (env.dataset / "SLOW").write_text("0.05")
    env.config(steps=200, interval=0)
    job_id = env.submit("job.toml")
    d = env.daemon()
    wait_for(lambda: (env.job(job_id)["step"] or 0) >= 3, what="progress")
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=30) == 0
    job = env.job(job_id)
    assert job["state"] == "pending" and job["attempts"] == 0
    assert job["checkpoint"] and job["step"] >= 3
    assert "requeued" in env.run("logs", str(job_id)).stdout
    (env.dataset / "SLOW").write_text("0.001")
    assert env.daemon("--exit-when-idle").wait(timeout=60) == 0
    assert env.state(job_id) == "done"
    assert env.ran()[1] == (job_id, job["step"])  # resumed where it stopped


def test_second_signal_exits_at_once(env):
    (env.dataset / "SLOW").write_text("5")
    env.config(steps=3)
    job_id = env.submit("job.toml")
    d = env.daemon()
    env.wait_state(job_id, "running")
    wait_for(env.ran, what="the trainer to start")
    d.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=3) == 128 + signal.SIGTERM


def test_cancel_pending_and_running(env):
    (env.dataset / "SLOW").write_text("0.05")
    env.config(steps=500)
    running, waiting = env.submit("job.toml"), env.submit("job.toml")
    d = env.daemon()
    env.wait_state(running, "running")
    wait_for(lambda: env.job(running)["step"], what="a first step")
    assert env.run("cancel", str(waiting)).stdout.strip() == f"{waiting} cancelled"
    assert "stopping" in env.run("cancel", str(running)).stdout
    job = env.wait_state(running, "cancelled")
    assert job["checkpoint"] and job["step"] < 500
    assert env.state(waiting) == "cancelled"
    again = env.run("cancel", str(running), check=False)
    assert again.returncode == 1 and "already cancelled" in again.stderr
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=10) == 0
    assert [j for j, _ in env.ran()] == [running]


def test_failures_become_failed_jobs_with_one_line(env):
    env.config(steps=3)
    (env.dataset / "FAIL").write_text("no clips in the dataset")
    a = env.submit("job.toml")
    assert env.daemon("--once").wait(timeout=30) == 0
    assert env.job(a)["error"] == "no clips in the dataset"
    (env.dataset / "FAIL").unlink()
    (env.dataset / "CRASH").write_text("")
    b = env.submit("job.toml")
    assert env.daemon("--once").wait(timeout=30) == 0
    assert env.job(b)["error"] == "RuntimeError: fake bug"
    log = env.run("logs", str(b)).stdout
    assert "Traceback" in log and "fake_trainer.py" in log
    (env.dataset / "CRASH").unlink()
    c = env.submit("job.toml")  # the queue goes on after failures
    assert env.daemon("--exit-when-idle").wait(timeout=30) == 0
    assert env.state(c) == "done"


BROKEN = '[data]\ndataset = "ds"\n[optimization]\nsteps = -1\n'


def test_files_dropped_broken_and_moved_by_hand(env):
    env.config(steps=6, interval=3)
    pending = env.spool / "pending"
    Spool(env.spool).create()
    (env.root / "outputs").mkdir(exist_ok=True)
    dropped = pending / "by hand.toml"
    dropped.write_text((env.root / "job.toml").read_text())  # relative to the spool's parent
    (pending / "broken.toml").write_text(BROKEN)
    settled = time.time() - 10  # older than the settle time: not being written any more
    for path in pending.iterdir():
        os.utime(path, (settled, settled))
    (env.dataset / "FAIL").write_text("first try fails")
    d = env.daemon("--exit-when-idle")
    assert d.wait(timeout=30) == 0
    jobs = env.status()
    (job,) = [j for j in jobs if j["state"] != "invalid"]
    (bad,) = [j for j in jobs if j["state"] == "invalid"]
    assert job["state"] == "failed" and job["name"] == "by hand"
    assert bad["origin"] == "pending/broken.toml" and "steps" in bad["error"]
    assert (env.spool / "invalid" / "broken.toml").read_text() == BROKEN
    assert "broken.toml" in env.run("status").stdout
    # A person moves the failed job back: it runs again under its id.
    (env.dataset / "FAIL").unlink()
    name = f"{job['id']:06d}.toml"
    os.rename(env.spool / "failed" / name, pending / name)
    assert env.daemon("--exit-when-idle").wait(timeout=30) == 0
    assert env.state(job["id"]) == "done"


def test_moved_back_job_resumes_from_its_checkpoint(env):
    (env.dataset / "SLOW").write_text("0.03")
    env.config(steps=100, interval=5)
    job_id = env.submit("job.toml")
    d = env.daemon()
    wait_for(lambda: env.job(job_id)["checkpoint"], what="a checkpoint")
    env.run("cancel", str(job_id))
    checkpoint_step = env.wait_state(job_id, "cancelled")["step"]
    d.send_signal(signal.SIGTERM)
    d.wait(timeout=10)
    name = f"{job_id:06d}.toml"
    os.rename(env.spool / "cancelled" / name, env.spool / "pending" / name)
    (env.dataset / "SLOW").write_text("0.001")
    assert env.daemon("--exit-when-idle").wait(timeout=30) == 0
    assert env.ran()[-1] == (job_id, checkpoint_step)


def test_workers_show_device_job_and_step(env):
    (env.dataset / "SLOW").write_text("0.05")
    env.config(steps=1000)
    job_id = env.submit("job.toml")
    d = env.daemon("--device", "cpu")
    env.wait_state(job_id, "running")
    wait_for(lambda: env.job(job_id)["step"], what="progress")
    import json
    (w,) = json.loads(env.run("workers", "--json").stdout)
    assert w["pid"] == d.pid and w["device"] == "cpu" and w["job"] == job_id and w["step"] >= 1
    assert f"{w['host']}:{d.pid}" in env.run("workers").stdout
    running = env.job(job_id)
    assert running["worker"] == w["worker"] and running["eta_seconds"] is not None
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=10) == 0
    assert "no live daemons" in env.run("workers").stdout
