"""What a job's log holds when the real trainer runs under a real daemon, and how library
warnings reach it instead of the daemon's stderr."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tomli_w

from ltxq.trainer.demo_data import write_demo_dataset
from ltxq.trainer.library_output import routed_to


def test_library_output_goes_to_the_run_log_and_is_restored(
        capfd: pytest.CaptureFixture) -> None:
    lines: list[str] = []
    diffusers = logging.getLogger("diffusers")
    before = (diffusers.handlers[:], diffusers.propagate, warnings.showwarning)
    with routed_to(lines.append):
        warnings.warn("a test warning from ltxq", UserWarning, stacklevel=1)
        logging.getLogger("diffusers.pipelines.ltx").warning("first\nsecond")
        logging.getLogger("transformers.tokenization_utils_base").warning(
            "Token indices sequence length is longer than the specified maximum sequence "
            "length for this model (56 > 32). Running this sequence ...")
        logging.getLogger("accelerate.state").warning("from a propagating logger")
    assert lines[0].startswith("warning: UserWarning: a test warning from ltxq (")
    assert lines[1:] == ["diffusers warning: first", "  second",
                         "accelerate warning: from a propagating logger"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert (diffusers.handlers, diffusers.propagate, warnings.showwarning) == before
    assert not any(type(h).__name__ == "_ToRunLog" for h in logging.getLogger().handlers)


def test_daemon_job_log_has_one_line_per_checkpoint_and_sample_and_a_quiet_stderr(
        tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "demo", clips=2, width=48, height=40, frames=10)
    (tmp_path / "job.toml").write_text(tomli_w.dumps({
        "model": {"source": "tiny-random"},
        "data": {"dataset": "demo", "resolution": "32x32x9"},
        "lora": {"rank": 4},
        "optimization": {"steps": 4},
        "validation": {"prompts": ["a red square"], "interval": 2, "inference_steps": 2,
                       "video": "32x32x9"},
        "checkpoints": {"interval": 2, "keep_last": 2}}))
    env = {k: v for k, v in os.environ.items() if k != "LTXQ_TRAINER"}
    env.update(LTXQ_SPOOL=str(tmp_path / "spool"), LTXQ_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))

    def ltxq(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ltxq", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    job_id = ltxq("submit", "job.toml").stdout.strip()
    # The real trainer, which also warns through diffusers' logger and `warnings` mid-run.
    daemon = ltxq("daemon", "--once", "--device", "cpu", "--trainer",
                  "tests.warning_trainer:train")
    assert daemon.returncode == 0, daemon.stderr
    assert daemon.stderr == ""
    log = ltxq("logs", job_id).stdout
    assert "done at step 4/4" in log, log
    for step in (2, 4):
        checkpoint = f"checkpoints/step_{step:05d}"
        sample = f"samples/step_{step:06d}_0.mp4"
        assert len(re.findall(re.escape(checkpoint), log)) == 1, log
        assert len(re.findall(re.escape(sample), log)) == 1, log
    assert "diffusers warning: a diffusers warning from inside the job" in log
    assert "a Python warning from inside the job" in log
