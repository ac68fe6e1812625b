"""Issue 4 through the command line with real daemons: dependencies, pause, edit, priority,
on_finish, wait, --unique, clear --older-than, status filters, GPU pinning, systemd units."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from conftest import REPO, wait_for

FAKE = ("--trainer", "tests.fake_trainer:train")


def drain(env, *args: str) -> None:
    assert env.run("daemon", *FAKE, "--poll", "0.1", "--exit-when-idle", *args).returncode == 0


def test_dependency_chains_run_in_order_and_fail_with_their_parent(env):
    env.config(steps=2)
    env.failing_config(error="broken data", steps=2)
    a = env.submit("job.toml", "--priority", "-1")
    b = env.submit("job.toml", "--after", str(a), "--priority", "5")
    c = env.submit("job.toml", "--after", f"{a},{b}")
    x = env.submit("bad.toml")
    y = env.submit("job.toml", "--after", str(x))
    z = env.submit("job.toml", "--after", str(y))
    p = env.submit("job.toml", "--priority", "-5")
    q = env.submit("job.toml", "--after", str(p))
    env.run("cancel", str(p))
    assert env.run("submit", "job.toml", "--after", "99", check=False).returncode == 2
    drain(env)
    assert [j for j, _ in env.ran()] == [a, b, c]  # x fails before the fake records a start
    states = {j["id"]: (j["state"], j["error"]) for j in env.status()}
    assert states[c] == ("done", None)
    assert states[y] == ("failed", f"dependency {x} failed")
    assert states[z] == ("failed", f"dependency {y} failed")
    assert states[q][0] == "failed" and states[q][1].startswith(f"dependency {p} failed")


def test_pause_lets_the_running_job_finish_and_claims_nothing(env):
    (env.dataset / "SLOW").write_text("0.05")
    env.config(steps=20)
    first = env.submit("job.toml")
    d = env.daemon()
    env.wait_state(first, "running")
    assert "paused" in env.run("pause").stdout
    second = env.submit("job.toml")
    assert env.wait_state(first, "done")["step"] == 20
    # The daemon is idle again (its info file says no job) and still leaves the queue alone.
    wait_for(lambda: json.loads(env.run("workers", "--json").stdout)[0]["job"] is None,
             what="the daemon to be idle")
    assert env.state(second) == "pending"
    assert "queue paused" in env.run("status").stdout
    d.send_signal(signal.SIGTERM)
    assert d.wait(timeout=10) == 0
    drain(env)  # a restarted daemon honours the pause too
    assert env.state(second) == "pending"
    env.run("unpause")
    (env.dataset / "SLOW").unlink()
    drain(env)
    assert env.state(second) == "done"
    assert "paused" not in env.run("status").stdout


EDITOR = """#!/bin/sh
# Say the file is open, wait for the go-ahead (the test makes a claim happen first), then
# change the steps.
touch "{opened}"
while [ ! -e "{go}" ]; do sleep 0.05; done
sed -i 's/^steps = 3$/steps = 4/' "$1"
"""


def test_edit_validates_replaces_and_is_refused_after_a_claim(env):
    env.config(steps=3)
    job_id = env.submit("job.toml")
    editor = env.root / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/^priority = 0$/priority = 7/' \"$1\"\n")
    editor.chmod(0o755)
    edit_env = dict(env.env, EDITOR=str(editor))
    assert env.run("edit", str(job_id), env=edit_env).stdout.strip() == f"{job_id} updated"
    assert env.job(job_id)["priority"] == 7
    editor.write_text("#!/bin/sh\nsed -i 's/^steps = 3$/steps = -3/' \"$1\"\n")
    p = env.run("edit", str(job_id), env=edit_env, check=False)
    assert p.returncode == 2 and "optimization.steps" in p.stderr and "kept in" in p.stderr
    assert env.job(job_id)["total_steps"] == 3
    # The race: the editor is open while a daemon claims the job.
    go, opened = env.root / "go", env.root / "opened"
    editor.write_text(EDITOR.format(go=go, opened=opened))
    edit = subprocess.Popen([sys.executable, "-m", "ltxq", "edit", str(job_id)], cwd=env.root,
                            env=edit_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # The claim must come after edit has read the pending job, or edit refuses at once
    # ("only pending jobs") and there is no race to test.
    wait_for(lambda: opened.exists() or edit.poll() is not None, what="the editor to open")
    assert edit.poll() is None, edit.communicate()
    drain(env, "--once")
    go.touch()
    _, err = edit.communicate(timeout=30)
    assert edit.returncode == 1 and "edit refused" in err
    kept = Path(err.strip().splitlines()[-1].rsplit(" ", 1)[-1])
    assert "steps = 4" in kept.read_text()  # nothing the user typed is lost
    job = env.job(job_id)
    assert job["state"] == "done" and job["total_steps"] == 3
    p = env.run("edit", str(job_id), env=edit_env, check=False)
    assert p.returncode == 1 and "only pending" in p.stderr


def test_priority_reorders_pending_jobs(env):
    env.config(steps=1)
    ids = [env.submit("job.toml") for _ in range(3)]
    assert env.run("priority", str(ids[2]), "10").returncode == 0
    env.run("priority", str(ids[0]), "-1")
    drain(env)
    assert [j for j, _ in env.ran()] == [ids[2], ids[1], ids[0]]
    assert env.run("priority", str(ids[0]), "3", check=False).returncode == 1


def test_on_finish_gets_the_values_and_its_failure_never_touches_the_job(env):
    env.config(steps=4, interval=2)
    env.failing_config(error="nope", steps=4)
    ok = env.submit("job.toml", "--name", "cake")
    failing = env.submit("bad.toml", "--on-finish", "exit 3")
    notify = 'env | grep ^LTXQ_ | sort > "notify-$LTXQ_JOB_ID.txt"'
    drain(env, "--on-finish", notify)

    def values(job_id: int) -> dict[str, str]:
        text = (env.root / f"notify-{job_id}.txt").read_text()
        return dict(line.split("=", 1) for line in text.splitlines())

    v = values(ok)
    job = env.job(ok)
    assert v["LTXQ_JOB_ID"] == str(ok) and v["LTXQ_JOB_STATE"] == "done"
    assert v["LTXQ_JOB_NAME"] == "cake" and v["LTXQ_ERROR"] == ""
    assert v["LTXQ_OUTPUT_DIR"] == job["output_dir"]
    assert v["LTXQ_CHECKPOINT"] == job["checkpoint"] and job["checkpoint"].endswith("00004")
    v = values(failing)
    assert v["LTXQ_JOB_STATE"] == "failed" and v["LTXQ_ERROR"] == "nope"
    assert env.state(failing) == "failed"
    assert "on_finish failed: exit status 3" in env.run("logs", str(failing)).stdout
    assert env.job(failing)["error"] == "nope"


def test_wait_exit_codes(env):
    env.config(steps=2)
    env.failing_config(error="nope", steps=2)
    ok, failing = env.submit("job.toml"), env.submit("bad.toml")
    waiter = subprocess.Popen([sys.executable, "-m", "ltxq", "wait", str(ok), "--poll", "0.1"],
                              cwd=env.root, env=env.env, stdout=subprocess.PIPE, text=True)
    drain(env)
    assert waiter.wait(timeout=30) == 0 and waiter.stdout.read().strip() == f"{ok} done"
    p = env.run("wait", str(ok), str(failing), check=False)
    assert p.returncode == 1 and f"{failing} failed: nope" in p.stdout
    assert env.run("wait", "99", check=False).returncode == 1
    pending = env.submit("job.toml")
    p = env.run("wait", str(pending), "--timeout", "0.2", "--poll", "0.05", check=False)
    assert p.returncode == 1 and "timed out" in p.stderr


def test_unique_under_repeated_cron_style_submits(env):
    env.config(steps=2)
    procs = [subprocess.Popen([sys.executable, "-m", "ltxq", "submit", "--unique", "job.toml"],
                              cwd=env.root, env=env.env, stdout=subprocess.PIPE, text=True)
             for _ in range(5)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(ids) == 1 and len(env.status()) == 1
    (first,) = ids
    drain(env)
    again = env.run("submit", "--unique", "job.toml").stdout.strip()
    assert again != first  # the first one is done; a new run is queued
    assert env.run("submit", "--unique", "job.toml").stdout.strip() == again


def test_clear_older_than_and_status_name_filter(env):
    env.config(steps=1)
    old = env.submit("job.toml", "--name", "cake-old")
    new = env.submit("job.toml", "--name", "cake-new")
    other = env.submit("job.toml", "--name", "bread")
    drain(env)
    path = env.spool / "done" / f"{old:06d}.toml"
    doc = tomllib.loads(path.read_text())
    doc["job"]["finished_at"] = doc["job"]["finished_at"].replace(year=2020)
    path.write_text(tomli_w.dumps(doc))
    assert [j["id"] for j in env.status("--name", "cake-*")] == [old, new]
    assert "bread" not in env.run("status", "--name", "cake*").stdout
    assert env.run("clear", "--older-than", "7d").stdout.startswith("cleared 1 job(s): " + str(old))
    assert [j["id"] for j in env.status()] == [new, other]
    p = env.run("clear", "--older-than", "soon", check=False)
    assert p.returncode == 2 and "duration" in p.stderr


def test_watch_redraws_a_table_that_fits_80_columns(env):
    (env.dataset / "SLOW").write_text("0.05")
    env.config(steps=15000)
    job_id = env.submit("job.toml", "--name", "a rather long job name that goes on")
    env.daemon()
    wait_for(lambda: env.job(job_id)["step"], what="progress")
    watch = subprocess.Popen([sys.executable, "-m", "ltxq", "status", "--watch", "0.2"],
                             cwd=env.root, env=env.env, stdout=subprocess.PIPE, text=True)
    try:
        text = ""
        while text.count("every 0.2s") < 2:  # click drops the ANSI codes into a pipe
            text += watch.stdout.readline()
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=10)
    frame = text.split("every 0.2s")[1]  # the first whole frame
    assert "running" in frame and "/15000" in frame and "[" in frame
    assert max(len(line) for line in frame.splitlines()) <= 80
    assert watch.returncode == 0


def test_device_pinning_sets_cuda_visible_devices(env):
    env.config(steps=1)
    env.submit("job.toml")
    env.submit("job.toml")
    base = {k: v for k, v in env.env.items() if k != "CUDA_VISIBLE_DEVICES"}
    daemon = [sys.executable, "-m", "ltxq", "daemon", *FAKE, "--once", "--device", "cuda:1"]
    subprocess.run(daemon, cwd=env.root, env=base, check=True)
    subprocess.run(daemon, cwd=env.root, env=dict(base, CUDA_VISIBLE_DEVICES="4,5"), check=True)
    lines = (env.outputs / "ran.log").read_text().split("\n")
    assert lines[0].split()[2:] == ["cuda:0", "1"]
    assert lines[1].split()[2:] == ["cuda:0", "5"]
    assert env.job(1)["device"] == "cuda:1"
    p = env.run("daemon", *FAKE, "--device", "cuda:x", check=False)
    assert p.returncode == 2 and "--device" in p.stderr
    p = env.run("daemon", *FAKE, "--device", "cuda:3", check=False,
                env=dict(env.env, CUDA_VISIBLE_DEVICES="0,1"))
    assert p.returncode == 2


def test_a_device_this_machine_lacks_stops_the_daemon_not_the_queue(env):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env.config(steps=1)
    first, second = env.submit("job.toml"), env.submit("job.toml")
    p = env.run("daemon", "--device", "cuda:1", "--exit-when-idle", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == "ltxq: --device cuda:1: no CUDA GPU is available here"
    assert [(j["id"], j["state"], j["attempts"]) for j in env.status()] == [
        (first, "pending", 0), (second, "pending", 0)]
    p = env.run("daemon", "--device", "foo", "--once", check=False)
    assert p.returncode == 2 and "--device" in p.stderr and "foo" in p.stderr
    assert {j["state"] for j in env.status()} == {"pending"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit, instance", [("ltxq@.service", "ltxq@0.service"),
                                            ("ltxq.service", "ltxq.service")])
def test_systemd_units_verify(tmp_path, unit, instance):
    text = (REPO / "systemd" / unit).read_text()
    assert "KillMode=mixed" in text and "Restart=on-failure" in text
    assert "TimeoutStopSec=" in text
    ltxq = shutil.which("ltxq") or str(Path(sys.executable).parent / "ltxq")
    text = text.replace("/opt/ltxq/.venv/bin/ltxq", ltxq).replace("/opt/ltxq", str(tmp_path))
    (tmp_path / instance).write_text(text)
    p = subprocess.run(["systemd-analyze", "verify", str(tmp_path / instance)],
                       capture_output=True, text=True, check=False,
                       env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    assert p.returncode == 0, p.stderr
    assert instance not in p.stderr, p.stderr
