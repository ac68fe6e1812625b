"""A 2-rank job through a real daemon and the real trainer: shutdown, a killed rank, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import tomli_w
from conftest import wait_for

from ltxq.trainer.demo_data import write_demo_dataset
from ltxq.trainer.launch import CONTROL_DIR, Control

STEPS = 200


def _ltxq(env: dict[str, str], cwd: Path, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "ltxq", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, f"ltxq {' '.join(args)} -> {p.returncode}\n{p.stdout}{p.stderr}"
    return p.stdout


def _daemon(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ltxq", "daemon", "--poll", "0.1",
                             "--device", "cpu", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_rank_job_requeues_on_shutdown_fails_on_a_dead_rank_then_resumes(
        tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "demo", clips=3, width=48, height=40, frames=10)
    (tmp_path / "job.toml").write_text(tomli_w.dumps({
        "model": {"source": "tiny-random"},
        "data": {"dataset": "demo", "resolution": "32x32x9"},
        "lora": {"rank": 4},
        "optimization": {"steps": STEPS, "learning_rate": 1e-3},
        "validation": {"interval": 0, "video": "32x32x9"},
        "checkpoints": {"interval": 0},
        "resources": {"processes": 2}}))
    env = {k: v for k, v in os.environ.items() if k != "LTXQ_TRAINER"}
    env.update(LTXQ_SPOOL=str(tmp_path / "spool"), LTXQ_CACHE=str(tmp_path / "cache"))
    job_id = _ltxq(env, tmp_path, "submit", "job.toml").strip()

    def job() -> dict:
        return json.loads(_ltxq(env, tmp_path, "status", "--json", job_id))[0]

    daemons = []
    try:
        # 1. SIGTERM to the daemon: the ranks (in their own session) are not signalled; the
        #    stop goes through the control folder, both checkpoint, the job is requeued.
        first = _daemon(env, tmp_path)
        daemons.append(first)
        wait_for(lambda: (job()["step"] or 0) >= 1, timeout=180, what="the ranks' first step")
        maps = Path(f"/proc/{first.pid}/maps").read_text()
        assert "libtorch" not in maps  # the daemon owns the ranks without loading torch
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0, first.stderr.read()
        stopped = job()
        assert stopped["state"] == "pending" and stopped["attempts"] == 0
        assert stopped["checkpoint"] and 1 <= stopped["step"] < STEPS
        output_dir = Path(stopped["output_dir"])
        assert not (output_dir / CONTROL_DIR).exists()

        # 2. kill -9 of rank 1 mid-run: the job fails with a one-line reason naming it.
        second = _daemon(env, tmp_path, "--exit-when-idle")
        daemons.append(second)
        wait_for(lambda: (job()["step"] or 0) > stopped["step"], timeout=180,
                 what="the resumed ranks' first step")
        rank1 = int(Control(output_dir / CONTROL_DIR).pid_file(1).read_text())
        os.kill(rank1, signal.SIGKILL)
        assert second.wait(timeout=120) == 0, second.stderr.read()
        failed = job()
        assert failed["state"] == "failed", failed
        assert "rank 1 of 2 died (killed by SIGKILL)" in failed["error"]
        assert not (output_dir / "pytorch_lora_weights.safetensors").exists()

        # 3. resume: it continues from the newest checkpoint and finishes.
        _ltxq(env, tmp_path, "resume", job_id)
        third = _daemon(env, tmp_path, "--exit-when-idle")
        daemons.append(third)
        assert third.wait(timeout=240) == 0, third.stderr.read()
        done = job()
        assert done["state"] == "done" and done["step"] == STEPS
        assert (output_dir / "pytorch_lora_weights.safetensors").is_file()
        log = _ltxq(env, tmp_path, "logs", job_id)
        assert f"2 ranks ended at step {STEPS} (completed)" in log
        assert log.count("resuming from") == 2
    finally:
        for d in daemons:
            if d.poll() is None:
                d.kill()
            d.communicate()
