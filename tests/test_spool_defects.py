"""Spool defects an outside audit found (issue 11), each reproduced as it was found: a
`submit --unique` that deadlocked on a dropped file, deleted locks/ and tmp/, staged work left
by kill -9, cancel of an orphaned Slurm job, spools made where none should be, and the claim
index staying exact when a file is edited by hand."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, new_spool, wait_for

from ltxq import Spool
from ltxq.errors import BadArgument, NoSpool
from ltxq.spool import State
from ltxq.spool.intake import ADOPT_PREFIX

OLD = time.time() - 3600  # an mtime well past every settle window


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return new_spool(tmp_path, settle_seconds=1)


def ltxq(spool: Spool, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, LTXQ_SPOOL=str(spool.path), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "ltxq", *args], cwd=spool.path.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_submit_unique_with_a_dropped_file_neither_hangs_nor_loses_it(spool):
    first = spool.submit(spool.path.parent / "job.toml")
    dropped = spool.dir("pending") / "dropped.toml"
    shutil.copy(spool.path.parent / "job.toml", dropped)
    os.utime(dropped, (OLD, OLD))
    # Before: publish held spool.lock, its scan adopted the dropped file, and adoption waited
    # for spool.lock: 60 s, then a traceback, the dropped job stuck in tmp/ forever.
    p = ltxq(spool, "submit", "job.toml", "--unique", timeout=20)
    assert p.returncode == 0 and p.stdout.strip() == str(first), p.stderr
    p = ltxq(spool, "status", "--json")
    assert p.returncode == 0
    assert not [n for n in os.listdir(spool.dir("tmp")) if n.startswith(ADOPT_PREFIX)]
    assert len(spool.ids(State.PENDING)) == 2 and not dropped.exists()


def hold_a_claim(spool: Spool) -> subprocess.Popen:
    """Start a process that claims the next job as its real owner and lives on."""
    code = ("import sys, time; from ltxq import Spool; import socket, os\n"
            "s = Spool(sys.argv[1]); c = s.claim(f'{socket.gethostname()}:{os.getpid()}').claim\n"
            "print(c.id, flush=True); time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(spool.path)], stdout=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.stdout is not None and p.stdout.readline().strip()
    return p


def test_deleting_locks_never_makes_a_live_job_recoverable(spool):
    job_id = spool.submit(spool.path.parent / "job.toml")
    owner = hold_a_claim(spool)
    try:
        shutil.rmtree(spool.path / "locks")
        # Before: the fresh lock was free, so the job was requeued and ran twice at once.
        assert spool.recover() == []
        assert spool.cancel(job_id) is State.RUNNING  # asked, not moved behind its owner's back
        assert spool.state_of(job_id) is State.RUNNING
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    moved = spool.recover()  # now the owner is really gone; its cancel request wins later
    assert [(e.id, e.state) for e in moved] == [(job_id, State.PENDING)]
    assert moved[0].job.meta.attempts == 1


def test_tmp_deleted_at_any_time_is_made_again(spool):
    shutil.rmtree(spool.path / "tmp")
    job_id = spool.submit(spool.path.parent / "job.toml")
    shutil.rmtree(spool.path / "tmp")
    claim = spool.claim("w:1").claim
    shutil.rmtree(spool.path / "tmp")
    spool.update(claim, step=2)
    shutil.rmtree(spool.path / "tmp")
    spool.finish(claim, State.DONE)
    assert spool.state_of(job_id) is State.DONE


def stage(spool: Spool, name: str, text: str, age: float) -> Path:
    path = spool.tmp_dir() / name
    path.write_text(text)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_the_tmp_cleaner_finishes_or_rolls_back_dead_staged_work(spool):
    config = (spool.path.parent / "job.toml").read_text()
    done = spool.submit(spool.path.parent / "job.toml")
    key = spool.get(done).job.meta.key
    published = stage(spool, f"{ADOPT_PREFIX}{key}-a.toml", config, 3600)
    orphan = stage(spool, f"{ADOPT_PREFIX}{'0' * 32}-b.toml", config, 3600)
    dead = stage(spool, "000001.toml.abc.tmp", "half", 3600)
    young = stage(spool, "000002.toml.def.tmp", "half", 5)
    said = spool.clean_tmp()
    assert len(said) == 3, said
    assert not published.exists() and not orphan.exists() and not dead.exists()
    assert young.exists()  # its writer may be alive
    assert any("put back" in line and "pending/b.toml" in line for line in said), said
    jobs = spool.jobs(State.PENDING)  # b.toml was put back byte for byte and is adopted again
    assert len(jobs) == 2 and "adopted pending/b.toml" in spool.log_path(jobs[1].id).read_text()


def test_cancelling_an_orphaned_slurm_job_leaves_it_to_a_slurm_daemon(spool):
    job_id = spool.submit(spool.path.parent / "job.toml")
    claim = spool.claim("w:1").claim
    spool.update(claim, slurm_job_id="123")
    claim.lock.release()  # its daemon died; the Slurm job may train on
    # Before: moved to cancelled/ at once while Slurm kept training (no scancel).
    assert spool.cancel(job_id) is State.RUNNING
    assert spool.cancel_requested(job_id) and spool.state_of(job_id) is State.RUNNING
    assert spool.recover() == []  # the same rule: recovery leaves it to Slurm too


def test_only_create_makes_a_spool_and_only_where_one_belongs(tmp_path):
    with pytest.raises(NoSpool, match="no spool at"):
        Spool(tmp_path / "nothing").jobs()
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(BadArgument, match="not empty"):
        Spool("/").create()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(BadArgument, match="not empty"):
        Spool(tmp_path / "home").create()
    assert os.listdir(tmp_path / "home") == ["notes.txt"]
    spool = Spool(tmp_path / "new")
    spool.create()
    shutil.rmtree(tmp_path / "new" / "logs")
    Spool(tmp_path / "new").create()  # a spool already: its missing folders come back
    assert (tmp_path / "new" / "logs").is_dir()


def test_claim_order_follows_a_file_edited_in_place(spool):
    a = spool.submit(spool.path.parent / "job.toml")
    b = spool.submit(spool.path.parent / "job.toml")
    for job_id in (a, b):
        path = spool.dir("pending") / f"{job_id:06d}.toml"
        os.utime(path, (OLD, OLD))
    assert spool.claim("probe:1").claim is not None  # warms the index, claims a
    c = spool.submit(spool.path.parent / "job.toml")
    path = spool.dir("pending") / f"{c:06d}.toml"
    os.utime(path, (OLD, OLD))
    spool.claim("probe:2", device=None)  # claims b, caches c's facts
    d = spool.submit(spool.path.parent / "job.toml")
    for job_id in (c, d):
        os.utime(spool.dir("pending") / f"{job_id:06d}.toml", (OLD, OLD))
    spool.claim("probe:3")  # claims c; d's facts are cached now (priority 0)
    path = spool.dir("pending") / f"{d:06d}.toml"
    e = spool.submit(spool.path.parent / "job.toml")
    os.utime(spool.dir("pending") / f"{e:06d}.toml", (OLD, OLD))
    # Edit d in place, same size, and give it an old mtime again: only the stat key changed.
    with open(path, "r+b") as f:
        text = f.read()
        f.seek(0)
        f.write(text.replace(b"priority = 0", b"priority = 9", 1))
    os.utime(path, (OLD - 60, OLD - 60))
    assert b"priority = 9" in path.read_bytes()
    claim = spool.claim("probe:4").claim
    assert claim is not None and claim.id == d


NOBODY = 65534


def test_the_author_of_a_job_survives_the_spools_own_rewrites(spool):
    """Trust (on_finish, sbatch_args) follows who wrote a job's content, not who rewrote its
    file last: the spool's bookkeeping must neither launder nor forge it."""
    mine = spool.submit(spool.path.parent / "job.toml")
    theirs = spool.submit(spool.path.parent / "job.toml")
    path = spool.job_path(State.PENDING, theirs)
    os.chown(path, NOBODY, NOBODY)  # written by another user (we run tests as root)
    spool.set_priority(theirs, 5)  # this uid's bookkeeping rewrite: the author stays theirs
    assert spool.get(theirs).job.meta.author_uid == NOBODY
    claim = spool.claim("w:1").claim  # the claim rewrites it as this uid, too
    assert claim.id == theirs and not spool.trusted(claim.job)
    assert claim.job.meta.author_uid == NOBODY
    assert spool.trusted(spool.get(mine).job)
    # A file someone else wrote claiming to be ours makes them its author at the next rewrite.
    forged = spool.job_path(State.PENDING, mine)
    forged.write_text(forged.read_text().replace(f"author_uid = {os.geteuid()}",
                                                 f"author_uid = {os.geteuid()}  # me, honest"))
    os.chown(forged, NOBODY, NOBODY)
    claim = spool.claim("w:2").claim
    assert claim.id == mine and claim.job.meta.author_uid == NOBODY
    # A dropped file's author is whoever owns it.
    dropped = spool.dir("pending") / "dropped.toml"
    shutil.copy(spool.path.parent / "job.toml", dropped)
    os.chown(dropped, NOBODY, NOBODY)
    os.utime(dropped, (OLD, OLD))
    adopted = [e for e in spool.jobs(State.PENDING)]
    assert [e.job.meta.author_uid for e in adopted] == [NOBODY]


def test_a_daemon_rolls_back_an_adoption_that_a_kill_9_interrupted(env):
    env.config(steps=1)
    env.submit("job.toml")  # makes the spool
    staged = env.spool / "tmp" / f"{ADOPT_PREFIX}{'1' * 32}-night.toml"
    staged.write_text((env.root / "job.toml").read_text())
    os.utime(staged, (OLD, OLD))  # its adopter died an hour ago
    dead = env.spool / "tmp" / "000001.toml.x1y2.tmp"
    dead.write_text("half a job")
    os.utime(dead, (OLD, OLD))
    d = env.daemon("--exit-when-idle")
    assert d.wait(timeout=60) == 0
    err = d.stderr.read()
    assert "put back tmp/" in err and "pending/night.toml" in err, err
    assert "removed dead staging file tmp/000001.toml.x1y2.tmp" in err
    jobs = env.status()
    assert [j["state"] for j in jobs] == ["done", "done"]  # the night job ran after all
    assert not staged.exists() and not dead.exists()


HOOK = 'echo "$LTXQ_JOB_ID $LTXQ_JOB_STATE" >> "$LTXQ_SPOOL/../hooks.txt"'


def test_on_finish_runs_for_jobs_a_user_cancelled_outside_any_daemon(env):
    """README promises the hook on every job end: a pending job cancelled by `ltxq cancel`
    ends in the CLI, not in a daemon; a daemon runs its hooks (exactly once) all the same."""
    env.config(steps=1)
    first, second = env.submit("job.toml"), env.submit("job.toml")
    env.run("pause")  # nothing is claimed: the jobs stay pending
    env.run("cancel", str(first))  # no daemon runs at all
    d1, d2 = env.daemon("--on-finish", HOOK), env.daemon("--on-finish", HOOK)
    hooks = env.root / "hooks.txt"
    wait_for(lambda: hooks.exists() and f"{first} cancelled" in hooks.read_text(), 30,
             "the hook of a job cancelled before any daemon ran")
    env.run("cancel", str(second))  # while two daemons are idle
    wait_for(lambda: f"{second} cancelled" in hooks.read_text(), 30, "the second hook")
    time.sleep(1.0)
    for d in (d1, d2):
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=30)
    assert sorted(hooks.read_text().split("\n")[:-1]) == [f"{first} cancelled",
                                                          f"{second} cancelled"]
    assert not [n for n in os.listdir(env.spool / "control") if n.endswith(".ended")]
