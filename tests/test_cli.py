"""The command line: help, exit codes, one-line errors, JSON fields, and no torch in fast paths."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner
from conftest import REPO

from ltxq.cli import cli

COMMANDS = ["submit", "status", "cancel", "resume", "logs", "clear", "daemon", "workers",
            "train", "preprocess", "demo-data", "pause", "unpause", "edit", "priority", "wait"]

JSON_FIELDS = {"id", "state", "name", "dataset", "priority", "attempts", "submitted_at",
               "started_at", "finished_at", "worker", "step", "total_steps", "loss",
               "eta_seconds", "output_dir", "checkpoint", "validation_sample", "error"}


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_of_every_command(command):
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    if command is None:
        for c in COMMANDS:
            assert c in result.output


def test_python_dash_m_works(env):
    p = env.run("--help")
    assert "submit" in p.stdout


def test_submit_prints_only_ids_and_status_json_has_the_fields(env):
    env.config(steps=4)
    assert env.run("submit", "job.toml", "job.toml").stdout == "1\n2\n"
    jobs = env.status()
    assert [j["id"] for j in jobs] == [1, 2]
    assert set(jobs[0]) >= JSON_FIELDS
    assert jobs[0]["state"] == "pending" and jobs[0]["total_steps"] == 4
    assert jobs[0]["dataset"] == str(env.dataset)
    table = env.run("status").stdout
    assert "pending" in table and "ID" in table.splitlines()[0]
    assert max(len(line) for line in table.splitlines()) <= 80


@pytest.mark.parametrize("args, key", [
    (["--set", "optimization.steps=0"], "optimization.steps"),
    (["--set", "optimization.stepz=3"], "optimization.stepz"),
    (["--set", "lora.rank=four"], "lora.rank"),
    (["--set", "data.dataset=nowhere"], "data.dataset"),
    (["--set", "data.resolution=65x64x9"], "data.resolution"),
])
def test_invalid_submit_exits_2_naming_file_and_key_and_writes_nothing(env, args, key):
    env.config()
    p = env.run("submit", "job.toml", *args, check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert "job.toml" in p.stderr and key in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not env.spool.exists()


def test_invalid_file_among_several_writes_none(env):
    env.config()
    (env.root / "bad.toml").write_text("[lora]\nrank = 4\n")
    p = env.run("submit", "job.toml", "bad.toml", check=False)
    assert p.returncode == 2 and "bad.toml" in p.stderr and "data.dataset" in p.stderr
    assert not env.spool.exists()  # not even an empty spool


def test_missing_file_and_broken_toml_exit_2(env):
    p = env.run("submit", "nope.toml", check=False)
    assert p.returncode == 2 and "nope.toml" in p.stderr
    (env.root / "broken.toml").write_text("[data\n")
    p = env.run("submit", "broken.toml", check=False)
    assert p.returncode == 2 and "invalid TOML" in p.stderr


def test_set_values_are_toml_typed_and_flag_form_works(env):
    env.config()
    job_id = env.submit("job.toml", "--set", "optimization.learning_rate=1e-3",
                        "--set", "validation.prompts=[\"a\", \"b\"]", "--set", "job.name=cake",
                        "--priority", "3")
    job = env.job(job_id)
    assert job["name"] == "cake" and job["priority"] == 3
    text = (env.spool / "pending" / f"{job_id:06d}.toml").read_text()
    assert "learning_rate = 0.001" in text and 'prompts = [\n    "a",\n    "b",\n]' in text
    flag_id = env.submit("--dataset", "ds", "--steps", "7", "--learning-rate", "5e-4",
                         "--validation-prompt", "a cat", "--rank", "8", "--model", "tiny-random",
                         "--resolution", "64x64x9")
    job = env.job(flag_id)
    assert job["total_steps"] == 7 and job["dataset"] == str(env.dataset)
    assert job["output_dir"].endswith(f"lora_r8_job{flag_id}") and job["name"] == "ds"
    p = env.run("submit", check=False)
    assert p.returncode == 2


def test_unknown_job_and_wrong_state_exit_1_with_one_line(env):
    env.config()
    env.submit("job.toml")  # job 1: the spool exists, job 9 does not
    for args in (["cancel", "9"], ["logs", "9"], ["resume", "9"], ["status", "9"]):
        p = env.run(*args, check=False)
        assert p.returncode == 1 and "no job 9" in p.stderr, args
        assert len(p.stderr.strip().splitlines()) == 1
    p = env.run("resume", "1", check=False)
    assert p.returncode == 1 and "pending" in p.stderr


def test_logs_clear_and_resume_fresh(env):
    env.config(steps=3)
    job_id = env.submit("job.toml")
    assert env.run("logs", str(job_id)).stdout == ""
    assert env.run("daemon", "--trainer", "tests.fake_trainer:train", "--once").returncode == 0
    log = env.run("logs", str(job_id)).stdout
    assert "step 3/3" in log and "done at step 3/3" in log
    assert len(env.run("logs", str(job_id), "-n", "1").stdout.splitlines()) == 1
    assert env.run("logs", str(job_id), "-f").stdout.endswith(log.splitlines()[-1] + "\n")
    fresh = int(env.run("resume", "--fresh", str(job_id)).stdout)
    assert env.job(fresh)["state"] == "pending"
    out = env.job(job_id)["output_dir"]
    assert "cleared 1" in env.run("clear").stdout
    assert os.path.isdir(out)
    assert [j["id"] for j in env.status()] == [fresh]


HEAVY = ("torch", "diffusers", "peft", "transformers", "accelerate")


@pytest.mark.parametrize("args", [["submit", "job.toml"], ["status"], ["status", "--json"],
                                  ["cancel", "1"], ["logs", "1"], ["clear"], ["workers"],
                                  ["wait", "1", "--timeout", "0"], ["pause"]])
def test_fast_commands_never_import_torch(env, args):
    env.config()
    env.submit("job.toml")
    assert env.modules_loaded(args, HEAVY) == []


def test_status_folds_old_finished_jobs_but_json_never_does(env):
    env.config(steps=1)
    env.run("submit", *["job.toml"] * 14)
    env.run("daemon", "--trainer", "tests.fake_trainer:train", "--exit-when-idle")
    table = env.run("status").stdout
    assert "4 older finished jobs" in table and "14 done" in table
    assert len(env.status()) == 14
    assert "older" not in env.run("status", "--state", "all").stdout
    assert json.loads(env.run("status", "--json", "--state", "failed").stdout) == []


def test_spool_option_and_env(env, tmp_path):
    env.config()
    other = tmp_path / "other-spool"
    job_id = int(env.run("--spool", str(other), "submit", "job.toml").stdout)
    assert (other / "pending" / f"{job_id:06d}.toml").exists()
    assert not env.spool.exists()  # $LTXQ_SPOOL was not used
    assert REPO.exists()


def test_status_from_its_cache_equals_a_fresh_read(env):
    env.config(steps=1)
    env.run("submit", *["job.toml"] * 3)
    env.run("daemon", "--trainer", "tests.fake_trainer:train", "--exit-when-idle")
    env.submit("job.toml")
    past = time.time() - 60  # older than the cache's settle time
    for folder in ("pending", "done", "logs"):
        for path in (env.spool / folder).iterdir():
            os.utime(path, (past, past))
    first = env.run("status", "--json", "--state", "all").stdout
    assert sorted(p.name for p in (env.spool / "tmp").glob("status-*.cache.json"))
    assert env.run("status", "--json", "--state", "all").stdout == first
    assert [r["state"] for r in json.loads(first)] == ["done"] * 3 + ["pending"]
    assert json.loads(env.run("status", "--json", "2").stdout) == [json.loads(first)[1]]
    env.run("cancel", "4")
    env.run("clear", "--state", "all")
    assert env.status() == []
    assert "no jobs" in env.run("status").stdout
