"""Audit fixes through the command line with real daemons: non-regular files in the spool,
dependency cycles, a job id in two folders, on_finish for dependency failures, argument checks."""

from __future__ import annotations

import os
import shutil
import tomllib

import pytest

from ltxq import Spool
from ltxq.errors import BadArgument, LtxqError

FAKE = ("--trainer", "tests.fake_trainer:train")


def drain(env, *args: str) -> None:
    p = env.run("daemon", *FAKE, "--poll", "0.1", "--exit-when-idle", *args, check=False)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("kind", ["directory", "named pipe", "broken symbolic link"])
@pytest.mark.parametrize("name", ["poison.toml", "000042.toml"])
def test_non_regular_pending_file_is_moved_aside_and_crashes_nothing(env, kind, name):
    env.config(steps=2)
    job = env.submit("job.toml")
    path = env.spool / "pending" / name
    if kind == "directory":
        path.mkdir()
    elif kind == "named pipe":
        os.mkfifo(path)
    else:
        path.symlink_to(env.root / "nowhere.toml")
    os.utime(path, (0, 0), follow_symlinks=False)  # settled
    records = env.status()  # neither hangs (120 s timeout) nor exits 1
    invalid = [r for r in records if r["state"] == "invalid"]
    assert len(invalid) == 1 and f"not a regular file ({kind})" in invalid[0]["error"]
    assert not os.path.lexists(path) and (env.spool / "invalid" / name).is_symlink() == (
        kind == "broken symbolic link")
    drain(env)
    assert env.state(job) == "done"


@pytest.mark.parametrize("kind", ["directory", "named pipe"])
def test_non_regular_file_in_a_finished_folder_is_skipped(env, kind):
    env.config(steps=2)
    job = env.submit("job.toml")
    drain(env)
    path = env.spool / "done" / "000050.toml"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    assert [r["id"] for r in env.status("--state", "all") if r["state"] != "invalid"] == [job]
    second = env.submit("job.toml")
    drain(env)
    assert env.state(second) == "done" and os.path.lexists(path)


def test_a_symlink_to_a_job_file_is_read(env):
    env.config(steps=2)
    outside = env.root / "kept.toml"
    shutil.copy(env.config(steps=2), outside)
    (env.spool / "pending").mkdir(parents=True)
    (env.spool / "pending" / "linked.toml").symlink_to(outside)
    os.utime(env.spool / "pending" / "linked.toml", (0, 0), follow_symlinks=False)
    drain(env)
    assert [r["state"] for r in env.status("--state", "all")] == ["done"]


def _edit(env, job_id: int, after: list[int]):
    path = env.spool / "pending" / f"{job_id:06d}.toml"
    text = path.read_text()
    doc = tomllib.loads(text)
    new = text.replace("[job]\n", f"[job]\nafter = {after}\n", 1) if "after" not in doc["job"] \
        else text.replace(f"after = {doc['job']['after']}", f"after = {after}")
    script = env.root / "editor.py"
    script.write_text(f"import sys; open(sys.argv[1], 'w').write({new!r})\n")
    return env.run("edit", str(job_id), check=False,
                   env=dict(env.env, EDITOR=f"{shutil.which('python3')} {script}"))


def test_edit_refuses_self_reference_and_cycles_submit_refuses_unknown_parent(env):
    env.config(steps=2)
    one = env.submit("job.toml")
    two = env.submit("job.toml", "--after", str(one))
    p = _edit(env, one, [one])
    assert p.returncode == 2 and "job.after" in p.stderr and "000001.toml" in p.stderr
    p = _edit(env, one, [two])
    assert p.returncode == 2
    first = p.stderr.splitlines()[0]
    assert "000001.toml: job.after: dependency cycle: 1 -> 2 -> 1" in first
    assert "after" not in tomllib.loads((env.spool / "pending" / "000001.toml").read_text())["job"]
    p = env.run("submit", "job.toml", "--after", "999", check=False)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1
    assert "job.toml: job.after: job 999 is not in" in p.stderr


def test_daemon_fails_a_hand_made_cycle_and_runs_on_finish_for_it(env):
    env.config(steps=2)
    one = env.submit("job.toml")
    two = env.submit("job.toml", "--after", str(one))
    three = env.submit("job.toml", "--after", str(two))
    alone = env.submit("job.toml")
    # Edited in place while no daemon runs: nothing checks it.
    path = env.spool / "pending" / "000001.toml"
    path.write_text(path.read_text().replace("[job]\n", "[job]\nafter = [2]\n", 1))
    drain(env, "--on-finish", 'echo "$LTXQ_JOB_ID $LTXQ_JOB_STATE $LTXQ_ERROR" >> hooks.txt')
    jobs = {r["id"]: r for r in env.status("--state", "all")}
    assert jobs[one]["state"] == jobs[two]["state"] == jobs[three]["state"] == "failed"
    assert jobs[one]["error"] == "dependency cycle: 1 -> 2 -> 1"
    assert jobs[two]["error"] == "dependency cycle: 2 -> 1 -> 2"
    assert jobs[three]["error"].startswith("dependency 2 failed")
    assert jobs[alone]["state"] == "done"
    hooks = sorted((env.root / "hooks.txt").read_text().splitlines())
    assert hooks == sorted(["1 failed dependency cycle: 1 -> 2 -> 1",
                            "2 failed dependency cycle: 2 -> 1 -> 2",
                            "3 failed dependency 2 failed", f"{alone} done "])
    assert env.run("wait", str(three), "--timeout", "5", check=False).returncode != 124


def test_on_finish_runs_for_a_dependency_failure(env):
    env.config(steps=2)
    env.failing_config(error="nope", steps=2)
    parent = env.submit("bad.toml")
    child = env.submit("job.toml", "--after", str(parent))
    drain(env, "--on-finish", 'echo "$LTXQ_JOB_ID $LTXQ_JOB_STATE $LTXQ_ERROR" >> hooks.txt')
    assert (env.root / "hooks.txt").read_text().splitlines() == [
        f"{parent} failed nope", f"{child} failed dependency {parent} failed"]


def test_a_copy_of_a_done_job_in_pending_runs_as_a_new_job(env):
    env.config(steps=2)
    one = env.submit("job.toml")
    drain(env)
    done = env.job(one)
    log = (env.spool / "logs" / "000001.log").read_text()
    shutil.copy(env.spool / "done" / "000001.toml", env.spool / "pending" / "000001.toml")
    os.utime(env.spool / "pending" / "000001.toml", (0, 0))
    records = env.status("--state", "all")
    assert [(r["id"], r["state"]) for r in records] == [(1, "done"), (2, "pending")]
    assert records[1]["output_dir"] != done["output_dir"]
    assert records[1]["output_dir"].endswith("job2")
    p = env.run("cancel", "1", check=False)
    assert p.returncode != 0 and env.state(1) == "done"
    drain(env)
    assert env.state(2) == "done" and env.job(1)["output_dir"] == done["output_dir"]
    assert [job for job, _ in env.ran()] == [1, 2]
    assert (env.spool / "logs" / "000001.log").read_text() == log


def test_an_unsettled_copy_is_neither_shown_nor_run_under_the_old_id(tmp_path):
    (tmp_path / "ds").mkdir()
    from conftest import write_config
    spool = Spool(tmp_path / "spool", settle_seconds=3600)
    one = spool.submit(write_config(tmp_path / "job.toml"))
    claim = spool.claim("w").claim
    spool.finish(claim, spool_state("done"))
    shutil.copy(spool.dir("done") / "000001.toml", spool.dir("pending") / "000001.toml")
    assert [(e.id, str(e.state)) for e in spool.jobs()] == [(one, "done")]
    assert spool.claim("w").claim is None
    assert str(spool.get(1).state) == "done"


def spool_state(name):
    from ltxq.spool import State
    return State(name)


def test_logs_negative_lines_and_control_characters_in_names_are_refused(env):
    env.config(steps=2)
    one = env.submit("job.toml")
    p = env.run("logs", str(one), "-n", "-5", check=False)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "--lines" in p.stderr
    p = env.run("submit", "job.toml", "--name", "a\nb", check=False)
    assert p.returncode == 2 and "job.toml: job.name:" in p.stderr
    assert len(p.stderr.splitlines()) == 1
    p = env.run("submit", "job.toml", "--name", "bell\x07", check=False)
    assert p.returncode == 2 and "job.name" in p.stderr


def test_python_api_arguments(tmp_path):
    (tmp_path / "ds").mkdir()
    from conftest import write_config
    spool = Spool(tmp_path / "spool")
    one = spool.submit(write_config(tmp_path / "job.toml"))
    assert spool.get("1").id == one == spool.get(1).id
    for bad in ("x", "-1", "0", 1.5):
        with pytest.raises(BadArgument, match="job id"):
            spool.get(bad)
    with pytest.raises(BadArgument, match="pending, running, done, failed, cancelled"):
        spool.jobs(state="bogus")
    with pytest.raises(BadArgument, match="bogus"):
        spool.clear(["bogus"])
    assert issubclass(BadArgument, LtxqError)
