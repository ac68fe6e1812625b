"""The Slurm client: parsing without a cluster, then real jobs on the one that ci/slurm/up starts.

The cluster tests skip (saying why) unless `sinfo` is on PATH and SLURM_CONF is set, as after
`eval "$(bash ci/slurm/up)"`. Waits are bounded polls on a condition, never timed assertions.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO
from test_slurm_node import FAKE, Claimed

from ltxq.errors import LtxqError
from ltxq.executors.slurm import client as slurm
from ltxq.executors.slurm import node
from ltxq.executors.slurm.client import JobState
from ltxq.spool import State

# --- without a cluster -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "state"), [
    ("COMPLETED", JobState.COMPLETED),
    ("CANCELLED by 0", JobState.CANCELLED),
    ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
    ("COMPLETING", JobState.RUNNING),
    ("CONFIGURING", JobState.RUNNING),
    ("REQUEUED", JobState.PENDING),
    ("REQUEUE_HOLD", JobState.PENDING),
    ("BOOT_FAIL", JobState.NODE_FAIL),
    ("DEADLINE", JobState.TIMEOUT),
    ("SOMETHING_NEW", JobState.RUNNING),   # unknown: keep waiting, never rerun a live job
])
def test_parse_state(text: str, state: JobState) -> None:
    assert slurm.parse_state(text) is state


def test_finished_states() -> None:
    assert not JobState.PENDING.finished and not JobState.RUNNING.finished
    assert all(s.finished for s in JobState if s not in (JobState.PENDING, JobState.RUNNING))


def test_parse_fields_keeps_spaces_in_values() -> None:
    line = ("JobId=12 JobName=ltxq-7 JobState=CANCELLED Reason=None ExitCode=0:15 "
            "Command=/tmp/a b/run.sh WorkDir=/tmp/a b StdOut=/tmp/x.out")
    fields = slurm.parse_fields(line)
    assert fields["JobState"] == "CANCELLED" and fields["ExitCode"] == "0:15"
    assert fields["Command"] == "/tmp/a b/run.sh" and fields["WorkDir"] == "/tmp/a b"


def test_missing_tools_give_one_line_errors(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))   # no Slurm tools at all
    assert slurm.available() is False
    with pytest.raises(LtxqError, match=r"^sbatch not found: is Slurm installed and on PATH\?$"):
        slurm.submit_batch("#!/bin/sh\ntrue\n")
    with pytest.raises(LtxqError, match=r"^scontrol not found"):
        slurm.job_state("1")


def test_failing_tool_gives_its_last_error_line(monkeypatch, tmp_path: Path) -> None:
    fake = tmp_path / "sbatch"
    fake.write_text("#!/bin/sh\necho 'sbatch: error: first' >&2\n"
                    "echo 'sbatch: error: Batch job submission failed: Invalid partition' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(LtxqError) as e:
        slurm.submit_batch("#!/bin/sh\ntrue\n")
    assert str(e.value) == "sbatch failed: Batch job submission failed: Invalid partition"


def test_script_text_must_be_a_script() -> None:
    with pytest.raises(LtxqError, match="must start with '#!'"):
        slurm.submit_batch("echo hi\n")
    with pytest.raises(LtxqError, match="no batch script at"):
        slurm.submit_batch(Path("/nonexistent/run.sh"))


def test_cluster_scripts_are_valid_bash() -> None:
    for name in ("up", "down"):
        script = REPO / "ci" / "slurm" / name
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert os.system(f"bash -n {script}") == 0


def test_config_template_has_every_placeholder_filled_by_up() -> None:
    template = (REPO / "ci" / "slurm" / "slurm.conf.in").read_text()
    up = (REPO / "ci" / "slurm" / "up").read_text()
    for placeholder in set(re.findall(r"@[A-Z_]+@", template)):
        assert f"s|{placeholder}|" in up, placeholder


# --- on a real cluster -------------------------------------------------------------------------

def _cluster_reason() -> str | None:
    if shutil.which("sinfo") is None:
        return "sinfo is not on PATH (start a cluster with: eval \"$(bash ci/slurm/up)\")"
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is unset (start a cluster with: eval \"$(bash ci/slurm/up)\")"
    if not slurm.available():
        return f"no Slurm controller answers for SLURM_CONF={os.environ['SLURM_CONF']}"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    reason = _cluster_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def jobs(cluster):
    """Job ids submitted by a test; whatever still runs is cancelled afterwards."""
    ids: list[str] = []
    yield ids
    for job_id in ids:
        slurm.cancel(job_id)


def wait_for(what: str, check: Callable[[], object], limit_s: float = 60) -> object:
    """Poll CHECK until it returns something truthy; fail naming WHAT after LIMIT_S."""
    deadline = time.monotonic() + limit_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def finished_state(job_id: str) -> Callable[[], JobState | str | None]:
    def check():
        state = slurm.job_state(job_id)
        if state is None:
            return "gone"
        return state if state.finished else None
    return check


def test_trivial_job_completes(jobs, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    job_id = slurm.submit_batch("#!/bin/sh\necho \"hello from $SLURM_JOB_ID $LTXQ_TEST_VAR\"\n",
                                name="ltxq-test-trivial", output=out, signal=None,
                                env={"LTXQ_TEST_VAR": "passed"})
    jobs.append(job_id)
    assert job_id.isdigit()
    state = wait_for("the trivial job to finish", finished_state(job_id))
    # Finished jobs stay known for MinJobAge; 'gone' is also a correct answer after that.
    assert state in (JobState.COMPLETED, "gone")
    assert out.read_text() == f"hello from {job_id} passed\n"
    assert slurm.job_states([job_id]).get(job_id) in (JobState.COMPLETED, None)


def test_held_job_waits_for_release(jobs, tmp_path: Path) -> None:
    out = tmp_path / "held.out"
    job_id = slurm.submit_batch("#!/bin/sh\necho ran\n", name="ltxq-test-held", output=out,
                                signal=None, extra_args=["--hold"])
    jobs.append(job_id)
    assert slurm.job_state(job_id) == JobState.PENDING
    assert slurm.job_info(job_id)["Reason"] == "JobHeldUser"
    slurm.release(job_id)
    assert wait_for("the released job", finished_state(job_id)) in (JobState.COMPLETED, "gone")
    assert out.read_text() == "ran\n"


def test_failing_job_reads_failed(jobs, tmp_path: Path) -> None:
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\nexit 3\n")
    job_id = slurm.submit_batch(script, name="ltxq-test-fail", output=Path("/dev/null"),
                                signal=None)
    jobs.append(job_id)
    assert wait_for("the failing job to finish", finished_state(job_id)) == JobState.FAILED
    assert slurm.job_info(job_id)["ExitCode"] == "3:0"


def test_cancel_a_sleeping_job(jobs) -> None:
    job_id = slurm.submit_batch("#!/bin/sh\nsleep 300\n", name="ltxq-test-sleep",
                                output=Path("/dev/null"), signal=None)
    jobs.append(job_id)
    wait_for("the sleeping job to start", lambda: slurm.job_state(job_id) == JobState.RUNNING)
    slurm.cancel(job_id)
    assert wait_for("the cancel to land", finished_state(job_id)) == JobState.CANCELLED
    slurm.cancel(job_id)                      # cancelling a finished job is not an error
    assert slurm.job_state("987654321") is None
    slurm.cancel("987654321")                 # nor is cancelling one Slurm never knew


def test_entry_through_slurm_leaves_an_unclaimed_job_alone(jobs, tmp_path: Path) -> None:
    """The daemon's batch script really execs the entry on the node (job 2 is not claimed)."""
    c = Claimed(tmp_path)
    try:
        out = tmp_path / "slurm.out"
        script = node.batch_script(c.spool.path, c.id + 1, python=Path(sys.executable),
                                          trainer=FAKE, workdir=tmp_path)
        job_id = slurm.submit_batch(script, name=f"ltxq-{c.id + 1}", output=out, signal=None,
                                    env={"PYTHONPATH": str(REPO)})
        jobs.append(job_id)
        state = wait_for("the entry to finish", finished_state(job_id))
        doc = node.parse_result_line(out.read_text())
        assert doc is not None and doc["exit"] == node.EXIT_NOT_OURS, out.read_text()
        assert state in (JobState.FAILED, "gone")
    finally:
        c.release()


def test_time_limit_signal_stops_the_job_at_a_checkpoint(jobs, tmp_path: Path) -> None:
    """A 1-minute job with --signal=B:USR1@60 gets USR1 well before its limit and stops cleanly.

    slurmctld checks signal times every ~30 s, so this waits up to about 30 s (measured: 10 s).
    """
    c = Claimed(tmp_path, steps=100000, interval=0, slow=0.05)
    try:
        out = tmp_path / "slurm.out"
        script = node.batch_script(c.spool.path, c.id, python=Path(sys.executable),
                                          trainer=FAKE, workdir=tmp_path)
        job_id = slurm.submit_batch(script, name=f"ltxq-{c.id}", time_limit=1,
                                    signal="B:USR1@60", output=out,
                                    env={"PYTHONPATH": str(REPO)})
        jobs.append(job_id)
        c.spool.update(c.claim, slurm_job_id=job_id)   # what the executor records
        state = wait_for("USR1 and a clean stop", finished_state(job_id), limit_s=75)
        text = out.read_text()
        doc = node.parse_result_line(text)
        assert doc is not None, text
        assert doc["exit"] == node.EXIT_STOPPED and doc["outcome"] == "stopped"
        assert Path(str(doc["checkpoint"])).is_dir()
        log = c.log()
        assert "SIGUSR1 on the Slurm node: stopping at a checkpoint" in log
        assert f"Slurm job {job_id} stopped at step {doc['step']}/100000 (SIGUSR1)" in log
        entry = c.job()
        assert entry.state is State.RUNNING            # moving it is the daemon's part
        assert entry.job.meta.checkpoint is None       # the node never writes the job file
        assert f"checkpoint step {doc['step']}: {doc['checkpoint']}" in log
        assert entry.job.meta.slurm_job_id == job_id
        # Exit 3 reads FAILED to Slurm; TIMEOUT would mean the signal came too late.
        assert state in (JobState.FAILED, "gone")
        if state != "gone":
            assert slurm.job_info(job_id)["ExitCode"] == f"{node.EXIT_STOPPED}:0"
    finally:
        c.release()


def test_admin_scancel_gives_the_entry_sigterm_and_a_checkpoint(jobs, tmp_path: Path) -> None:
    """scancel sends SIGTERM, then SIGKILL after KillWait (5 s here): the entry stops in time."""
    c = Claimed(tmp_path, steps=100000, interval=0, slow=0.05)
    try:
        out = tmp_path / "slurm.out"
        script = node.batch_script(c.spool.path, c.id, python=Path(sys.executable),
                                          trainer=FAKE, workdir=tmp_path)
        job_id = slurm.submit_batch(script, name=f"ltxq-{c.id}", output=out, signal=None,
                                    env={"PYTHONPATH": str(REPO)})
        jobs.append(job_id)
        wait_for("training to start", lambda: "/100000 loss" in c.log())
        slurm.cancel(job_id)
        assert wait_for("the cancel", finished_state(job_id)) in (JobState.CANCELLED, "gone")
        doc = wait_for("the result line", lambda: node.parse_result_line(out.read_text()))
        assert doc["exit"] == node.EXIT_STOPPED and doc["outcome"] == "stopped"
        assert "SIGTERM on the Slurm node: stopping at a checkpoint" in c.log()
        assert f"checkpoint step {doc['step']}: {doc['checkpoint']}" in c.log()
        assert c.job().job.meta.checkpoint is None     # recorded by the daemon, not the node
    finally:
        c.release()
