"""The compute-node entry without a cluster: signals become should_stop, outcomes become exits.

Each test claims a job in a real spool, as the Slurm executor does (the test process holds the
lock, like the daemon), and runs the entry on it in this process or in a child process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, wait_for, write_config

from ltxq.executors.slurm import node
from ltxq.executors.slurm.node import (
    EXIT_COMPLETED,
    EXIT_FAILED,
    EXIT_NO_TRAINER,
    EXIT_NOT_OURS,
    EXIT_STOPPED,
    EXIT_USAGE,
    StopFlag,
)
from ltxq.run import Outcome, TrainResult
from ltxq.spool import Claim, Spool, State

FAKE = "tests.fake_trainer:train"


class Claimed:
    """A spool in ROOT with one job claimed by this process (held lock), as the daemon leaves it."""

    def __init__(self, root: Path, *, steps: int = 20, interval: int = 5, slow: float | None = None,
                 slurm_job_id: str | None = None):
        self.root = root
        self.dataset = root / "ds"
        self.dataset.mkdir(exist_ok=True)
        if slow is not None:
            (self.dataset / "SLOW").write_text(str(slow))
        config = write_config(root / "job.toml", dataset=self.dataset, steps=steps,
                              interval=interval, extra=f'[output]\nroot = "{root / "out"}"\n')
        self.spool = Spool(root / "spool")
        self.spool.create()
        self.id = self.spool.submit(config)
        claim = self.spool.claim(f"test:{os.getpid()}").claim
        assert claim is not None and claim.id == self.id
        if slurm_job_id:
            self.spool.update(claim, slurm_job_id=slurm_job_id)
        self.claim: Claim = claim

    def log(self) -> str:
        path = self.spool.log_path(self.id)
        return path.read_text() if path.exists() else ""

    def job(self):
        return self.spool.get(self.id)

    def release(self) -> None:
        self.claim.lock.release()


@pytest.fixture
def claimed(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.syspath_prepend(str(REPO))   # `tests.fake_trainer` by name, as the daemon would
    made: list[Claimed] = []

    def make(**kw) -> Claimed:
        made.append(Claimed(tmp_path, **kw))
        return made[-1]
    yield make
    for c in made:
        c.release()


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in node.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_completed_job_is_logged_and_its_file_never_written(claimed) -> None:
    c = claimed()
    before = c.claim.entry.path.read_bytes()
    status, result, error = node.run_job(c.spool, c.id, StopFlag(), trainer=FAKE)
    assert (status, error) == (EXIT_COMPLETED, None)
    assert result is not None and result.outcome == Outcome.COMPLETED and result.step == 20
    assert result.lora_path == c.root / "out" / f"lora_r4_job{c.id}" / \
        "pytorch_lora_weights.safetensors"
    log = c.log()
    assert "step 20/20 loss" in log and "completed at step 20/20" in log
    assert f"checkpoint step 20: {result.checkpoint}" in log
    entry = c.job()
    # The lock holder moves and writes the job; this process only reports, through the log.
    assert entry.state is State.RUNNING
    assert c.claim.entry.path.read_bytes() == before


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_slurm_signal_becomes_should_stop(claimed, restore_signals, sig: signal.Signals) -> None:
    c = claimed(steps=100)
    stop = StopFlag()
    stop.install()

    def train(config, run):
        for step in range(1, 100):
            if step == 4:
                os.kill(os.getpid(), sig)   # the handler runs before kill returns
            if run.should_stop():
                ckpt = run.output_dir / "checkpoints" / "step_00003"
                run.checkpoint_saved(ckpt, 3)
                return TrainResult(Outcome.STOPPED, 3, 99, checkpoint=ckpt)
            run.progress(step, 99, 0.5, 1e-4, 0.01)
        raise AssertionError("should_stop never became true")

    status, result, _ = node.run_job(c.spool, c.id, stop, trainer=train)
    assert status == EXIT_STOPPED
    assert result is not None and result.outcome == Outcome.STOPPED and result.step == 3
    log = c.log()
    assert f"{sig.name} on the Slurm node: stopping at a checkpoint" in log
    assert f"stopped at step 3/99 ({sig.name})" in log
    assert "checkpoint step 3: " in log and c.job().job.meta.checkpoint is None


def test_cancel_request_stops_the_job(claimed) -> None:
    c = claimed(steps=50, slow=0.01)
    c.spool.cancel(c.id)   # a running job: only writes control/<id>.cancel
    assert c.spool.cancel_requested(c.id)
    status, result, _ = node.run_job(c.spool, c.id, StopFlag(), trainer=FAKE)
    assert status == EXIT_STOPPED and result is not None and result.step == 0
    assert "(cancel requested)" in c.log()


def test_job_leaving_running_stops_the_trainer(claimed) -> None:
    """If its owner gives the job up mid-run, the node stops instead of training it twice."""
    c = claimed(steps=100)
    seen = []

    def train(config, run):
        for step in range(1, 100):
            if step == 5:
                # What recovery by another daemon does to the file.
                os.rename(c.claim.entry.path, c.spool.dir("pending") / c.claim.entry.path.name)
            if run.should_stop():
                run.checkpoint_saved(run.output_dir / "checkpoints" / "step_00004", 4)
                seen.append(step)
                return TrainResult(Outcome.STOPPED, 4, 99)
        raise AssertionError("should_stop never became true")

    status, _, _ = node.run_job(c.spool, c.id, StopFlag(), trainer=train)
    assert status == EXIT_STOPPED and seen == [5]
    assert "job left running/ on the Slurm node" in c.log()
    # Nothing was written back into running/: the job is not resurrected there.
    assert c.spool.state_of(c.id) is State.PENDING
    assert not list(c.spool.dir("running").iterdir())


@pytest.mark.parametrize(("marker", "words"), [
    ("FAIL", "dataset has no usable clips"),
    ("CRASH", "RuntimeError: fake bug"),
])
def test_training_error_exits_1_with_the_reason(claimed, marker: str, words: str) -> None:
    c = claimed()
    (c.dataset / marker).write_text("dataset has no usable clips")
    status, result, error = node.run_job(c.spool, c.id, StopFlag(), trainer=FAKE)
    assert (status, result, error) == (EXIT_FAILED, None, words)
    assert f"failed: {words}" in c.log()


def test_trainer_that_cannot_load_is_not_the_jobs_fault(claimed) -> None:
    c = claimed()
    status, _, error = node.run_job(c.spool, c.id, StopFlag(), trainer="no_such_mod:train")
    assert status == EXIT_NO_TRAINER and "cannot load the trainer no_such_mod:train" in error
    assert c.spool.state_of(c.id) is State.RUNNING


def test_job_not_running_is_left_alone(claimed) -> None:
    c = claimed()
    called = []
    status, _, error = node.run_job(c.spool, c.id + 1, StopFlag(),
                                           trainer=lambda cfg, run: called.append(1))
    assert status == EXIT_NOT_OURS and error.startswith(f"no job {c.id + 1} in ")
    c.spool.finish(c.claim, State.PENDING)
    status, _, error = node.run_job(c.spool, c.id, StopFlag(),
                                           trainer=lambda cfg, run: called.append(1))
    assert status == EXIT_NOT_OURS and error == f"job {c.id} is pending, not running"
    assert called == []


def test_job_of_another_slurm_job_is_left_alone(claimed, monkeypatch) -> None:
    c = claimed(slurm_job_id="41")
    monkeypatch.setenv("SLURM_JOB_ID", "40")
    called = []
    status, _, error = node.run_job(c.spool, c.id, StopFlag(),
                                           trainer=lambda cfg, run: called.append(1))
    assert status == EXIT_NOT_OURS and error == f"job {c.id} belongs to Slurm job 41, not 40"
    assert called == []
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    status, _, _ = node.run_job(c.spool, c.id, StopFlag(), trainer=FAKE)
    assert status == EXIT_COMPLETED
    assert c.job().job.meta.slurm_job_id == "41"
    assert "Slurm job 41 started on" in c.log()


def test_unreadable_job_file_exits_2_naming_it(claimed) -> None:
    c = claimed()
    path = c.claim.entry.path
    path.write_text(path.read_text() + "\n[lorra]\nrank = 3\n")
    status, _, error = node.run_job(c.spool, c.id, StopFlag(), trainer=FAKE)
    assert status == EXIT_USAGE
    assert str(path) in error and "lorra" in error


def test_result_line_round_trip() -> None:
    result = TrainResult(Outcome.STOPPED, 5, 20, checkpoint=Path("/o/checkpoints/step_00005"))
    line = node.result_line(EXIT_STOPPED, result, None)
    text = "some stderr noise\n" + line + "\n"
    assert node.parse_result_line(text) == {
        "exit": 3, "error": None, "outcome": "stopped", "step": 5, "total_steps": 20,
        "checkpoint": "/o/checkpoints/step_00005", "lora_path": None, "validation_sample": None,
        "peak_memory_gib": None}
    assert node.parse_result_line("nothing here") is None


def test_batch_script_execs_the_entry(tmp_path: Path) -> None:
    text = node.batch_script(tmp_path / "my spool", 12, python=Path("/venv/bin/python"),
                                    trainer=FAKE, workdir=tmp_path)
    assert text.startswith("#!/bin/sh\n")
    assert text.strip().splitlines()[-1] == (
        f"exec /venv/bin/python -m ltxq.executors.slurm.node --spool '{tmp_path / 'my spool'}' "
        f"--job 12 --trainer {FAKE}")


def test_entry_process_stops_on_sigusr1_and_prints_result(claimed) -> None:
    """A real process: SIGUSR1 (what --signal=B:USR1@N sends) -> checkpoint -> exit 3."""
    c = claimed(steps=100000, interval=0, slow=0.01)
    proc = _node(c)
    try:
        wait_for(lambda: "step 1/100000" in c.log(), what="the first step")
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_STOPPED, err
    doc = node.parse_result_line(out)
    assert doc is not None and doc["outcome"] == "stopped" and doc["exit"] == EXIT_STOPPED
    assert Path(str(doc["checkpoint"])).is_dir()
    assert "SIGUSR1 on the Slurm node" in c.log()


def test_entry_bad_arguments_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ltxq.executors.slurm.node", "--spool",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == EXIT_USAGE
    assert "--job" in proc.stderr


def test_entry_without_a_spool_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    proc = subprocess.run([sys.executable, "-m", "ltxq.executors.slurm.node", "--spool",
                           str(missing), "--job", "1"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == EXIT_USAGE
    assert f"no spool at {missing}" in proc.stderr
    assert node.parse_result_line(proc.stdout)["exit"] == EXIT_USAGE
    assert not missing.exists()


def test_entry_modules_import_nothing_heavy() -> None:
    code = ("import sys, ltxq.executors.slurm.node, ltxq.executors.slurm.executor, ltxq.daemon; "
            "heavy = [m for m in ('torch', 'diffusers', 'peft', 'transformers', 'accelerate') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def _node(c: Claimed) -> subprocess.Popen:
    """Start the node entry on C's job in a child process, as the batch script does."""
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "ltxq.executors.slurm.node", "--spool",
                             str(c.spool.path), "--job", str(c.id), "--trainer", FAKE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _folders(c: Claimed) -> list[str]:
    return [st.value for st in State if (c.spool.dir(st) / c.claim.entry.path.name).exists()]


def test_node_never_rewrites_the_job_its_daemon_changed(claimed) -> None:
    """A daemon adopting the job rewrites [job].worker; the node's checkpoints must not revert
    it (they used to write the node's stale copy of the whole file)."""
    c = claimed(steps=100000, interval=1, slow=0.02)
    proc = _node(c)
    try:
        wait_for(lambda: c.log().count("checkpoint step") >= 2, what="checkpoints")
        c.spool.update(c.claim, worker="adopter:1")    # what an adopting daemon writes
        written = c.claim.entry.path.read_bytes()
        seen = c.log().count("checkpoint step")
        wait_for(lambda: c.log().count("checkpoint step") >= seen + 5, what="more checkpoints")
        assert c.claim.entry.path.read_bytes() == written
        assert c.job().job.meta.worker == "adopter:1"
        proc.send_signal(signal.SIGUSR1)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_STOPPED
    assert c.claim.entry.path.read_bytes() == written


def test_node_never_recreates_a_job_moved_meanwhile(claimed) -> None:
    """The daemon moves the job out of running/ while the node saves checkpoints as fast as it
    can: the job stays in exactly one folder (a write from the node used to re-create it)."""
    c = claimed(steps=100000, interval=1, slow=0.001)
    proc = _node(c)
    try:
        wait_for(lambda: c.log().count("checkpoint step") >= 3, what="checkpoints")
        c.spool.finish(c.claim, State.PENDING)        # requeued by its daemon, lock released
        for _ in range(50):
            assert _folders(c) == ["pending"]
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_STOPPED, err
    assert "job left running/ on the Slurm node" in c.log()
    assert _folders(c) == ["pending"]
