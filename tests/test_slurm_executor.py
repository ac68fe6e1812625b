"""`ltxq daemon --executor slurm` end to end on the cluster that ci/slurm/up starts.

Real daemons, real sbatch/squeue/scancel, the entry running on the (loopback) compute node.
Queue semantics use the fake trainer; the equality checks use the real tiny-random trainer.
Cluster tests skip (saying why) without a cluster; waits are bounded polls, never timings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from conftest import FAKE, Env, node_pid, wait_for
from test_slurm import cluster  # noqa: F401 - the fixture: skip (saying why) without a cluster

from ltxq.executors.slurm import client as slurm
from ltxq.spool import Spool, State

SLURM_ARGS = ("--executor", "slurm", "--poll", "0.2", "--warn-before", "30")


@pytest.fixture
def senv(cluster, tmp_path: Path):  # noqa: F811 - pytest passes the fixture by name
    e = Env(tmp_path)
    e.outputs.mkdir()
    yield e
    e.stop_all()
    for job in Spool(e.spool).jobs():  # nothing of this test may stay on the cluster
        if job.job.meta.slurm_job_id:
            slurm.cancel(job.job.meta.slurm_job_id)


def _config(e: Env, name: str = "job.toml", *, steps: int = 5, interval: int = 0,
            slow: float | None = None, fail: str | None = None, extra: str = "") -> Path:
    dataset = e.root / f"ds-{Path(name).stem}"
    dataset.mkdir(exist_ok=True)
    if slow is not None:
        (dataset / "SLOW").write_text(str(slow))
    if fail is not None:
        (dataset / "FAIL").write_text(fail)
    return e.config(name, dataset=dataset, steps=steps, interval=interval,
                    extra=f'[output]\nroot = "{e.outputs}"\n{extra}')


def _slurm_id(e: Env, job_id: int) -> str | None:
    return e.job(job_id).get("slurm_job_id")


def _other_id(e: Env, job_id: int, first: str) -> str | None:
    """The Slurm id of job JOB_ID once it is not FIRST any more."""
    sid = _slurm_id(e, job_id)
    return sid if sid and sid != first else None


def test_jobs_run_on_slurm_once_each_and_end_done_or_failed(senv: Env) -> None:
    ok = [senv.submit(str(_config(senv, f"ok{i}.toml"))) for i in range(2)]
    bad = senv.submit(str(_config(senv, "bad.toml", fail="the data is cursed")))
    d = senv.daemon(*SLURM_ARGS, "--exit-when-idle")
    out, err = d.communicate(timeout=240)
    assert d.returncode == 0, out + err
    for job_id in ok:
        job = senv.job(job_id)
        assert job["state"] == "done" and job["step"] == 5, job
        sid = job["slurm_job_id"]
        assert sid and sid.isdigit()
        log = senv.run("logs", str(job_id)).stdout
        assert f"submitted as Slurm job {sid}" in log
        assert f"Slurm job {sid} started on" in log and f"done at step 5/5 (Slurm job {sid})" in log
        assert (senv.spool / "logs" / f"{job_id:06d}.slurm-{sid}.out").exists()
    failed = senv.job(bad)
    assert failed["state"] == "failed" and failed["error"] == "the data is cursed"
    assert sorted(j for j, _ in senv.ran()) == ok  # each ran exactly once (FAIL: before recording)
    # clear removes the Slurm output files with the job's log, never the outputs.
    senv.run("clear", "--state", "done")
    assert not list((senv.spool / "logs").glob(f"{ok[0]:06d}.*"))


def test_cancel_stops_a_running_slurm_job_and_scancels_a_waiting_one(senv: Env) -> None:
    running = senv.submit(str(_config(senv, "run.toml", steps=100000, slow=0.05)))
    # --begin keeps the second one PENDING in Slurm: it has not started when cancelled.
    waiting = senv.submit(str(_config(senv, "wait.toml",
                                      extra='[resources]\nsbatch_args = ["--begin=now+1hour"]\n')))
    senv.daemon(*SLURM_ARGS)
    wait_for(lambda: (senv.job(running)["step"] or 0) >= 2, 120, "the first job to train")
    sid = wait_for(lambda: _slurm_id(senv, waiting), 60, "the second job's Slurm id")
    assert slurm.job_state(sid) is slurm.JobState.PENDING
    senv.run("cancel", str(running), str(waiting))
    first = senv.wait_state(running, "cancelled", timeout=120)
    senv.wait_state(waiting, "cancelled", timeout=60)
    assert first["step"] and first["checkpoint"], first   # stopped at a checkpoint
    assert slurm.job_state(sid) in (slurm.JobState.CANCELLED, None)
    assert "scancel Slurm job" in senv.run("logs", str(waiting)).stdout
    assert [j for j, _ in senv.ran()] == [running]           # the waiting one never trained


def test_preemption_requeues_and_resumes_and_a_killed_node_counts_an_attempt(senv: Env) -> None:
    job_id = senv.submit(str(_config(senv, steps=60, interval=5, slow=0.1)))
    senv.daemon(*SLURM_ARGS)
    wait_for(lambda: (senv.job(job_id)["step"] or 0) >= 12, 120, "training past a checkpoint")
    # The node never writes the job file; its owner records what the node logged, as it runs.
    assert "/step_" in wait_for(lambda: senv.job(job_id)["checkpoint"], 30, "a checkpoint shown")
    first = _slurm_id(senv, job_id)
    slurm.cancel(first)   # what preemption (and an admin's scancel) does: SIGTERM, then KILL
    wait_for(lambda: _other_id(senv, job_id, first), 120, "a second Slurm job")
    job = senv.job(job_id)
    assert job["attempts"] == 0, job                          # not the job's fault
    wait_for(lambda: node_pid(senv.spool, job_id), 60, "the second run to start")
    wait_for(lambda: len(senv.ran()) == 2 and (senv.job(job_id)["step"] or 0) > senv.ran()[1][1],
             120, "the second run to train")
    os.kill(node_pid(senv.spool, job_id), signal.SIGKILL)   # node failure / OOM kill
    done = senv.wait_state(job_id, "done", timeout=240)
    assert done["attempts"] == 1 and done["step"] == 60, done
    starts = [step for j, step in senv.ran()]
    assert len(starts) == 3 and starts[0] == 0 and 0 < starts[1] <= starts[2], starts
    log = senv.run("logs", str(job_id)).stdout
    assert "time limit, preemption or scancel); requeued to resume" in log
    assert "without a result" in log and "requeued to resume (attempt 1 of 3 used)" in log


def test_a_stopped_or_dead_daemon_leaves_its_slurm_job_to_the_next_one(senv: Env) -> None:
    job_id = senv.submit(str(_config(senv, steps=100, slow=0.1)))
    first = senv.daemon(*SLURM_ARGS)
    wait_for(lambda: (senv.job(job_id)["step"] or 0) >= 3, 120, "training on Slurm")
    sid = _slurm_id(senv, job_id)
    workers = senv.run("workers").stdout
    assert "slurm" in workers and f"Slurm job {sid}" in workers
    assert f"Slurm job {sid} (via" in senv.run("status").stdout
    first.send_signal(signal.SIGTERM)          # systemctl stop: the cluster job runs on
    _, err = first.communicate(timeout=30)
    assert first.returncode == 0 and f"job {job_id} = Slurm {sid}" in err, err
    # A local daemon must not rerun it: its Slurm job is still training.
    local = senv.daemon("--exit-when-idle")
    local.communicate(timeout=60)
    assert senv.job(job_id)["state"] == "running"
    second = senv.daemon(*SLURM_ARGS)
    wait_for(lambda: senv.run("logs", str(job_id)).stdout.count("adopts Slurm job") == 1, 60,
             "the second daemon to adopt it")
    second.send_signal(signal.SIGKILL)         # a crash: no chance to say anything
    second.wait(timeout=10)
    senv.daemon(*SLURM_ARGS)
    done = senv.wait_state(job_id, "done", timeout=180)
    assert done["slurm_job_id"] == sid and done["attempts"] == 0
    assert senv.ran() == [(job_id, 0)]                        # one run, adopted, never repeated
    assert senv.run("logs", str(job_id)).stdout.count("adopts Slurm job") == 2


def test_time_limit_warning_checkpoints_and_requeues(senv: Env) -> None:
    """--time-limit 1 with --warn-before 60: SIGUSR1 at once (slurmctld checks every ~30 s)."""
    job_id = senv.submit(str(_config(senv, steps=100000, slow=0.05)))
    senv.daemon("--executor", "slurm", "--poll", "0.2", "--time-limit", "1",
                "--warn-before", "60")
    first = wait_for(lambda: _slurm_id(senv, job_id), 60, "the Slurm job")
    second = wait_for(lambda: _other_id(senv, job_id, first), 150,
                      "the warning, a checkpoint and a second Slurm job")
    log = senv.run("logs", str(job_id)).stdout
    assert "SIGUSR1 on the Slurm node: stopping at a checkpoint" in log
    assert f"(job {first} " in log and "requeued to resume" in log
    wait_for(lambda: len(senv.ran()) >= 2, 60, "the second run")
    assert senv.ran()[1][1] > 0                               # it resumed from the checkpoint
    assert senv.job(job_id)["attempts"] == 0
    senv.run("cancel", str(job_id))
    senv.wait_state(job_id, "cancelled", timeout=120)
    assert slurm.job_state(second) in (slurm.JobState.FAILED, slurm.JobState.CANCELLED,
                                       slurm.JobState.COMPLETED, None)


# --- the real trainer through Slurm ------------------------------------------------------------

def _real_job(root: Path, name: str, *, steps: int, processes: int = 1, batch: int = 1) -> Path:
    from ltxq.trainer.demo_data import write_demo_dataset

    if not (root / "demo").exists():
        write_demo_dataset(root / "demo", clips=3, width=48, height=40, frames=10)
    path = root / f"{name}.toml"
    path.write_text(tomli_w.dumps({
        "job": {"name": name},
        "model": {"source": "tiny-random"},
        "data": {"dataset": "demo", "resolution": "32x32x9"},
        # No dropout and no first-frame conditioning: with them one process draws both samples'
        # masks from one stream where two ranks draw one each (see test_multiproc.py).
        "lora": {"rank": 4, "dropout": 0.0},
        "optimization": {"steps": steps, "learning_rate": 1e-3, "batch_size": batch,
                         "first_frame_conditioning_p": 0.0},
        "validation": {"interval": 0, "video": "32x32x9", "inference_steps": 1},
        "checkpoints": {"interval": 5},
        "output": {"root": str(root / "out")},
        "resources": {"processes": processes}}))
    return path


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_real_trainer_preempted_and_resumed_equals_uninterrupted(senv: Env) -> None:
    senv.env["LTXQ_CACHE"] = str(senv.root / "cache")
    steps = 400
    whole = senv.submit(str(_real_job(senv.root, "whole", steps=steps)))
    cut = senv.submit(str(_real_job(senv.root, "cut", steps=steps)))
    senv.run("priority", str(cut), "1")   # run the interrupted one first
    real = [sys.executable, "-m", "ltxq", "daemon", *SLURM_ARGS, "--max-jobs", "1"]
    d = subprocess.Popen([*real, "--exit-when-idle"], cwd=senv.root, env=senv.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    senv.daemons.append(d)
    wait_for(lambda: (senv.job(cut)["step"] or 0) >= 7, 300, "the real trainer past step 5")
    slurm.cancel(_slurm_id(senv, cut))    # preemption: SIGTERM on the node
    out, err = d.communicate(timeout=600)
    assert d.returncode == 0, out + err
    a, b = senv.job(whole), senv.job(cut)
    assert a["state"] == b["state"] == "done", (a, b)
    log = senv.run("logs", str(cut)).stdout
    assert "requeued to resume" in log, log
    assert "resuming from" in log.split("requeued to resume")[1], log
    lora = "pytorch_lora_weights.safetensors"
    assert _max_diff(Path(a["output_dir"]) / lora, Path(b["output_dir"]) / lora) == 0.0


def test_real_two_rank_job_through_slurm_equals_one_process(senv: Env) -> None:
    senv.env["LTXQ_CACHE"] = str(senv.root / "cache")
    two = senv.submit(str(_real_job(senv.root, "two", steps=6, processes=2, batch=1)))
    one = senv.submit(str(_real_job(senv.root, "one", steps=6, processes=1, batch=2)))
    d = subprocess.Popen([sys.executable, "-m", "ltxq", "daemon", *SLURM_ARGS, "--max-jobs", "1",
                          "--exit-when-idle"], cwd=senv.root, env=senv.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    senv.daemons.append(d)
    out, err = d.communicate(timeout=600)
    assert d.returncode == 0, out + err
    a, b = senv.job(two), senv.job(one)
    assert a["state"] == b["state"] == "done", (a, b)
    assert "2 ranks ended at step 6 (completed)" in senv.run("logs", str(two)).stdout
    lora = "pytorch_lora_weights.safetensors"
    # Float precision: the ranks sum the same gradients in another order (test_multiproc.py).
    assert _max_diff(Path(a["output_dir"]) / lora, Path(b["output_dir"]) / lora) <= 1e-7


# --- without a cluster -------------------------------------------------------------------------

def test_local_recovery_leaves_jobs_with_a_slurm_id_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    (tmp_path / "ds").mkdir()
    from conftest import write_config

    job_id = spool.submit(write_config(tmp_path / "job.toml", dataset=tmp_path / "ds"))
    claim = spool.claim("gone:1").claim
    spool.update(claim, slurm_job_id="4242")
    claim.lock.release()                        # its daemon died
    assert spool.recover() == []
    assert spool.get(job_id).state is State.RUNNING
    spool.update(claim, slurm_job_id=None)      # an ordinary job is recovered as before
    assert [(e.id, e.state) for e in spool.recover()] == [(job_id, State.PENDING)]


def test_slurm_executor_without_slurm_is_a_one_line_error(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path), LTXQ_SPOOL=str(tmp_path / "spool"))  # no sinfo
    p = subprocess.run([sys.executable, "-m", "ltxq", "daemon", "--executor", "slurm",
                        "--trainer", FAKE], env=env, capture_output=True, text=True, timeout=60,
                       check=False)
    assert p.returncode == 1 and "no Slurm controller answers" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run([sys.executable, "-m", "ltxq", "daemon", "--executor", "slurm",
                        "--device", "cuda:0"], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 2 and "use --gpus" in p.stderr


def test_sbatch_args_of_a_job_file_another_uid_owns_are_skipped(senv: Env) -> None:
    job_id = senv.submit(str(_config(senv, extra='[resources]\nsbatch_args = '
                                                  '["--begin=now+1hour"]\n')))
    os.chown(senv.spool / "pending" / f"{job_id:06d}.toml", 65534, 65534)
    senv.daemon(*SLURM_ARGS)
    senv.wait_state(job_id, "done", timeout=30)   # --begin would hold it for an hour
    assert ("sbatch_args skipped: the job file was written by uid 65534, not this daemon's uid "
            f"{os.geteuid()}") in senv.run("logs", str(job_id)).stdout
