"""Job kinds: caption and preprocess jobs in the spool, run by real daemons like training jobs
(after, cancel, kill -9 recovery, two daemons, on_finish, status kind), with the tiny-random
captioner. Training jobs use the fake trainer; preprocess uses the tiny LTX model.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import Env, wait_for

from ltxq.errors import ConfigError
from ltxq.job import dump_job, parse_job
from ltxq.trainer.demo_data import write_demo_dataset

SLOW = 300.0


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def kenv(env: Env, cache: Path) -> Env:
    env.env["LTXQ_CACHE"] = str(cache)
    return env


def uncaptioned(folder: Path, clips: int, frames: int = 9) -> Path:
    write_demo_dataset(folder, clips=clips, frames=frames)
    for txt in folder.glob("*.txt"):
        txt.unlink()
    return folder


def rows(folder: Path) -> list[str]:
    path = folder / "captions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["media_path"] for line in path.read_text().splitlines() if line]


def log(env: Env, job_id: int) -> str:
    return (env.spool / "logs" / f"{job_id:06d}.log").read_text()


# --- the job file -----------------------------------------------------------------------------


def test_kind_defaults_to_train_and_train_files_stay_as_they_were(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    job = parse_job('[data]\ndataset = "ds"\n', base_dir=tmp_path)
    assert job.kind == "train" and job.task is None and job.work is job.config
    assert "kind =" not in dump_job(job)
    cap = parse_job('[job]\nkind = "caption"\n[caption]\ndataset = "ds"\nmodel = "tiny-random"\n'
                    'max_new_tokens = 7\n[resources]\npartition = "gpu"\n', base_dir=tmp_path,
                    require_dataset_exists=True)
    assert cap.kind == "caption" and cap.work.max_new_tokens == 7
    assert cap.config.data.dataset == str(tmp_path / "ds") == cap.work.dataset
    assert cap.config.resources.partition == "gpu"
    again = parse_job(dump_job(cap))
    assert again.work == cap.work and again.kind == "caption"
    assert again.fingerprint() == cap.fingerprint() != job.fingerprint()
    pre = parse_job('[job]\nkind = "preprocess"\n[preprocess]\ndataset = "ds"\n'
                    'resolution = "64x64x9"\n', base_dir=tmp_path)
    assert pre.config.data.resolution == "64x64x9" and pre.config.data.dataset == pre.work.dataset


@pytest.mark.parametrize(("text", "key"), [
    ('[job]\nkind = "paint"\n[caption]\ndataset = "ds"\n', "job.kind"),
    ('[job]\nkind = "caption"\n[data]\ndataset = "ds"\n', "data"),
    ('[job]\nkind = "caption"\n', "caption"),
    ('[job]\nkind = "caption"\n[caption]\nmodel = "x"\n', "caption.dataset"),
    ('[job]\nkind = "caption"\n[caption]\ndataset = "ds"\nformat = "csv"\n', "caption.format"),
    ('[job]\nkind = "caption"\n[caption]\ndataset = "ds"\nmax_new_tokens = 0\n',
     "caption.max_new_tokens"),
    ('[job]\nkind = "caption"\n[caption]\ndataset = "ds"\nprompt = 3\n', "caption.prompt"),
    ('[job]\nkind = "caption"\n[caption]\ndataset = "nope"\n', "caption.dataset"),
    ('[job]\nkind = "preprocess"\n[preprocess]\ndataset = "ds"\nresolution = "65x64x9"\n',
     "preprocess.resolution"),
    ('[job]\nkind = "preprocess"\n[preprocess]\ndataset = "ds"\nsteps = 3\n',
     "preprocess.steps"),
])
def test_bad_kind_files_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "ds").mkdir()
    with pytest.raises(ConfigError) as e:
        parse_job(text, file="j.toml", base_dir=tmp_path, require_dataset_exists=True)
    assert str(e.value).startswith(f"j.toml: {key}:")


# --- the command line -------------------------------------------------------------------------


def test_submit_caption_and_preprocess_status_shows_kind(kenv: Env) -> None:
    env = kenv
    job_toml = env.config(steps=2)
    cap = env.submit("--caption", "ds", "--model", "tiny-random", "--priority", "3",
                     "--set", "caption.prompt=Say what happens.")
    train = env.submit(str(job_toml), "--after", str(cap))
    pre = env.submit("--preprocess", "ds", "--config", str(job_toml))
    records = {r["id"]: r for r in env.status()}
    assert [records[i]["kind"] for i in (cap, train, pre)] == ["caption", "train", "preprocess"]
    assert records[cap]["dataset"] == str(env.dataset) == records[cap]["output_dir"]
    assert records[cap]["model"] == "tiny-random" and records[cap]["priority"] == 3
    assert records[cap]["total_steps"] is None and records[train]["total_steps"] == 2
    text = (env.spool / "pending" / f"{cap:06d}.toml").read_text()
    assert 'kind = "caption"' in text and "Say what happens." in text
    pre_text = (env.spool / "pending" / f"{pre:06d}.toml").read_text()
    assert 'resolution = "64x64x9"' in pre_text and 'model = "tiny-random"' in pre_text
    table = env.run("status").stdout
    assert "caption: ds" in table and "preprocess: ds" in table
    for args, hint in ((["--caption", "ds", "--steps", "3"], "optimization.steps"),
                       (["--caption", "missing"], "caption.dataset"),
                       (["--caption", "ds", "--set", "caption.format=csv"], "caption.format"),
                       (["--config", str(job_toml)], "--preprocess")):
        p = env.run("submit", *args, check=False)
        assert p.returncode == 2 and hint in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert env.run("submit", "--help").stdout.count("--caption") == 1


def test_submit_status_cancel_of_kinds_never_import_torch(kenv: Env) -> None:
    code = """
import sys
from ltxq.cli import cli
for args in (["submit", "--caption", "ds", "--model", "tiny-random"], ["status", "--json"],
             ["status"], ["cancel", "1"], ["caption", "--help"]):
    try:
        cli(args, prog_name="ltxq")
    except SystemExit as e:
        assert not e.code, (args, e.code)
assert "torch" not in sys.modules and "transformers" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], cwd=kenv.root, env=kenv.env, check=True,
                   capture_output=True, timeout=60)


# --- real daemons -----------------------------------------------------------------------------


def test_one_daemon_runs_the_night_pipeline(kenv: Env) -> None:
    """caption -> train (after it) and preprocess (after it); a second caption job borrows the
    warm captioner, the training job releases it; a training job after a caption job that
    left its dataset without captions fails at claim time, with the reason."""
    env = kenv
    ds = uncaptioned(env.dataset, clips=3)
    (ds / "clip_000.txt").write_text("a caption a person wrote\n")
    ds2 = uncaptioned(env.root / "ds2", clips=2)
    bad = env.root / "bad"
    bad.mkdir()
    (bad / "x.mp4").write_bytes(b"garbage")
    hook = env.root / "hook"
    cap = env.submit("--caption", "ds", "--model", "tiny-random", "--set",
                     "caption.max_new_tokens=4", "--on-finish", f"echo $LTXQ_JOB_STATE > {hook}")
    cap2 = env.submit("--caption", "ds2", "--model", "tiny-random", "--set",
                      "caption.max_new_tokens=4")
    train = env.submit(str(env.config(steps=2)), "--after", str(cap))
    pre = env.submit("--preprocess", "ds", "--config", str(env.root / "job.toml"),
                     "--after", str(cap))
    cap_bad = env.submit("--caption", "bad", "--model", "tiny-random")
    train_bad = env.submit(str(env.config("bad.toml", dataset="bad")), "--after", str(cap_bad))
    daemon = env.daemon("--exit-when-idle")
    daemon.wait(SLOW)
    records = {r["id"]: r for r in env.status()}
    states = {i: records[i]["state"] for i in records}
    assert states == {cap: "done", cap2: "done", train: "done", pre: "done",
                      cap_bad: "done", train_bad: "failed"}, (states, daemon.stderr.read())
    assert sorted(rows(ds)) == ["clip_001.mp4", "clip_002.mp4"]
    assert sorted(rows(ds2)) == ["clip_000.mp4", "clip_001.mp4"]
    assert (records[cap]["step"], records[cap]["total_steps"]) == (3, 3)
    assert records[cap]["loss"] is None and records[cap]["kind"] == "caption"
    assert hook.read_text().strip() == "done"
    assert "already loaded (warm)" in log(env, cap2)
    assert "released the warm captioner" in log(env, train)
    assert [j for j, _ in env.ran()] == [train]
    assert "preprocessed 3 samples" in log(env, pre)
    # It filled the cache the training config uses: preprocessing it again finds it.
    again = env.run("preprocess", "ds", "--config", str(env.root / "job.toml"))
    assert "loaded from the cache" in again.stdout
    assert "skipped x.mp4" in log(env, cap_bad)
    assert "released the warm LTX model" in log(env, cap_bad)   # preprocess held it
    assert "none of its 1 media files has a caption" in records[train_bad]["error"]


def test_cancel_a_running_caption_job_between_clips(kenv: Env) -> None:
    env = kenv
    ds = uncaptioned(env.dataset, clips=12, frames=24)
    job = env.submit("--caption", "ds", "--model", "tiny-random", "--set",
                     "caption.max_new_tokens=60")
    env.daemon()
    wait_for(lambda: rows(ds), SLOW, "a first caption")
    env.run("cancel", str(job))
    record = env.wait_state(job, "cancelled", timeout=60)
    done = rows(ds)
    assert 1 <= len(done) < 12 and len(set(done)) == len(done)
    assert record["step"] is not None and record["step"] < 12
    assert "cancelled at step" in log(env, job)
    env.run("resume", str(job))   # continues with the clips left, each captioned once
    env.wait_state(job, "done", timeout=SLOW)
    assert rows(ds)[:len(done)] == done
    assert sorted(rows(ds)) == [f"clip_{i:03d}.mp4" for i in range(12)]


def test_kill_9_mid_caption_job_then_another_daemon_continues(kenv: Env) -> None:
    env = kenv
    ds = uncaptioned(env.dataset, clips=8, frames=24)
    job = env.submit("--caption", "ds", "--model", "tiny-random", "--set",
                     "caption.max_new_tokens=40")
    first = env.daemon()
    wait_for(lambda: rows(ds), SLOW, "a first caption")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    before = rows(ds)
    assert len(before) < 8
    env.daemon("--exit-when-idle").wait(SLOW)
    record = env.job(job)
    assert record["state"] == "done" and record["attempts"] == 1
    after = rows(ds)
    assert after[:len(before)] == before
    assert sorted(after) == [f"clip_{i:03d}.mp4" for i in range(8)]


def test_two_daemons_never_caption_a_clip_twice(kenv: Env) -> None:
    """Two caption jobs on one dataset, run at once by two daemons: every clip once."""
    env = kenv
    ds = uncaptioned(env.dataset, clips=10, frames=24)
    jobs = [env.submit("--caption", "ds", "--model", "tiny-random", "--set",
                       "caption.max_new_tokens=30") for _ in range(2)]
    daemons = [env.daemon("--exit-when-idle") for _ in range(2)]
    for d in daemons:
        d.wait(SLOW)
    assert [env.state(j) for j in jobs] == ["done", "done"]
    counts = Counter(rows(ds))
    assert sorted(counts) == [f"clip_{i:03d}.mp4" for i in range(10)]
    assert set(counts.values()) == {1}
    workers = {env.job(j)["worker"] for j in jobs}
    assert len(workers) == 2   # both daemons took one


def test_slurm_node_runs_a_caption_job_by_its_kind(tmp_path: Path, cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Slurm compute node runs for a claimed job dispatches by kind like the daemon."""
    from ltxq.executors.slurm import node
    from ltxq.spool import Spool

    monkeypatch.setenv("LTXQ_CACHE", str(cache))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    ds = uncaptioned(tmp_path / "ds", clips=2)
    (tmp_path / "cap.toml").write_text('[job]\nkind = "caption"\n[caption]\ndataset = "ds"\n'
                                       'model = "tiny-random"\nmax_new_tokens = 4\n')
    spool = Spool(tmp_path / "spool")
    spool.create()
    job_id = spool.submit(tmp_path / "cap.toml")
    claim = spool.claim("test:1").claim
    assert claim is not None
    try:
        status, result, error = node.run_job(spool, job_id, node.StopFlag(), device="cpu")
    finally:
        claim.lock.release()
    assert (status, error) == (node.EXIT_COMPLETED, None)
    assert result is not None and (result.step, result.total_steps) == (2, 2)
    assert sorted(rows(ds)) == ["clip_000.mp4", "clip_001.mp4"]
    assert "completed at step 2/2" in spool.log_path(job_id).read_text()
