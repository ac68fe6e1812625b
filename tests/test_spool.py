"""The spool contract: states are folders, writes are atomic, races settle by rename and lock."""

from __future__ import annotations

import os
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import write_config

from ltxq import Spool
from ltxq.errors import ConfigError, JobNotFound, WrongState
from ltxq.spool import State


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    (tmp_path / "ds").mkdir()
    spool = Spool(tmp_path / "spool", settle_seconds=0)
    spool.create()
    return spool


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path / "job.toml", steps=5)


def files(spool: Spool, state: State | str) -> list[str]:
    return sorted(os.listdir(spool.dir(state)))


def test_submit_writes_one_zero_padded_pending_file(spool, cfg, tmp_path):
    assert spool.submit(cfg) == 1
    assert spool.submit(cfg, name="second", **{"optimization.steps": 3}) == 2
    assert files(spool, "pending") == ["000001.toml", "000002.toml"]
    assert [f for f in files(spool, "tmp") if f.endswith(".tmp")] == []  # no staging left
    doc = tomllib.loads((spool.dir("pending") / "000002.toml").read_text())
    assert doc["job"]["id"] == 2 and doc["job"]["name"] == "second"
    assert doc["optimization"]["steps"] == 3
    assert doc["data"]["dataset"] == str(tmp_path / "ds")  # stored absolute
    assert doc["job"]["output_dir"] == str(tmp_path / "outputs" / "lora_r4_job2")
    assert spool.get(1).job.meta.name == "job"  # default: the file's name


def test_submit_overrides_with_double_underscore(spool, cfg):
    job_id = spool.submit(cfg, optimization__steps=4, priority=7)
    job = spool.get(job_id).job
    assert job.config.optimization.steps == 4 and job.meta.priority == 7


@pytest.mark.parametrize("change, key", [
    ({"optimization.stepz": 3}, "optimization.stepz"),
    ({"optimization.steps": "ten"}, "optimization.steps"),
    ({"optimization.steps": 0}, "optimization.steps"),
    ({"data.dataset": "missing"}, "data.dataset"),
    ({"job.bogus": 1}, "job.bogus"),
])
def test_invalid_submit_names_file_and_key_and_writes_nothing(spool, cfg, change, key):
    with pytest.raises(ConfigError) as e:
        spool.submit(cfg, **change)
    assert str(cfg) in str(e.value) and key in str(e.value)
    for state in State:
        assert files(spool, state) == []
    assert [f for f in files(spool, "tmp") if f.endswith(".tmp")] == []  # no staging left


def test_ids_are_never_reused_after_clear(spool, cfg):
    a = spool.submit(cfg)
    spool.cancel(a)
    assert spool.clear([State.CANCELLED]) == [a]
    assert spool.submit(cfg) == a + 1


def test_claim_order_is_priority_then_id(spool, cfg):
    low, high, mid = spool.submit(cfg), spool.submit(cfg, priority=5), spool.submit(cfg)
    order = []
    while (claim := spool.claim("w:1").claim) is not None:
        order.append(claim.id)
        spool.finish(claim, State.DONE)
    assert order == [high, low, mid]
    assert files(spool, "done") == ["000001.toml", "000002.toml", "000003.toml"]


def test_a_held_lock_keeps_others_off(spool, cfg):
    a, b = spool.submit(cfg), spool.submit(cfg)
    first = spool.claim("w:1").claim
    second = spool.claim("w:2").claim
    assert (first.id, second.id) == (a, b)
    assert spool.claim("w:3").claim is None
    assert spool.recover() == []  # both owners alive
    assert spool.get(a).state is State.RUNNING
    assert spool.get(a).job.meta.worker == "w:1"


def test_recovery_requeues_then_fails_after_max_attempts(spool, cfg):
    job_id = spool.submit(cfg, max_attempts=2)
    claim = spool.claim("w:1").claim
    claim.lock.release()  # the daemon died
    assert [(e.id, e.state) for e in spool.recover()] == [(job_id, State.PENDING)]
    assert spool.get(job_id).job.meta.attempts == 1
    claim = spool.claim("w:2").claim
    claim.lock.release()
    assert [(e.id, e.state) for e in spool.recover()] == [(job_id, State.FAILED)]
    entry = spool.get(job_id)
    assert entry.state is State.FAILED and entry.job.meta.attempts == 2
    assert "interrupted 2 times" in entry.job.meta.error
    assert "w:2" in spool.log_path(job_id).read_text()


def test_requeue_on_shutdown_counts_no_attempt(spool, cfg):
    job_id = spool.submit(cfg)
    claim = spool.claim("w:1").claim
    spool.finish(claim, State.PENDING, step=3)
    entry = spool.get(job_id)
    assert entry.state is State.PENDING and entry.job.meta.attempts == 0
    assert entry.job.meta.step == 3 and not claim.lock.held


def test_cancel_pending_running_and_orphaned(spool, cfg):
    a, b, c = spool.submit(cfg), spool.submit(cfg), spool.submit(cfg)
    assert spool.cancel(c) is State.CANCELLED
    claim_a = spool.claim("w:1").claim
    assert spool.cancel(a) is State.RUNNING  # its daemon stops it at the next step
    assert spool.cancel_requested(a)
    claim_b = spool.claim("w:2").claim
    claim_b.lock.release()  # b's daemon died: cancelled at once
    assert spool.cancel(b) is State.CANCELLED
    spool.finish(claim_a, State.CANCELLED)
    assert not spool.cancel_requested(a)
    with pytest.raises(WrongState):
        spool.cancel(a)
    with pytest.raises(JobNotFound):
        spool.cancel(99)


def test_resume_same_id_and_fresh(spool, cfg):
    job_id = spool.submit(cfg)
    claim = spool.claim("w:1").claim
    spool.update(claim, checkpoint="/x/step_00002")
    spool.finish(claim, State.FAILED, error="boom")
    with pytest.raises(WrongState):
        spool.resume(spool.submit(cfg))  # pending: nothing to resume
    assert spool.resume(job_id) == job_id
    meta = spool.get(job_id).job.meta
    assert meta.error is None and meta.attempts == 0 and meta.checkpoint == "/x/step_00002"
    new = spool.resume(job_id, fresh=True)
    assert new != job_id
    fresh = spool.get(new).job
    assert fresh.meta.checkpoint is None and fresh.output_dir().name == f"lora_r4_job{new}"


def test_clear_removes_spool_files_and_logs_only(spool, cfg, tmp_path):
    a, b = spool.submit(cfg), spool.submit(cfg)
    out = spool.get(a).job.output_dir()
    out.mkdir(parents=True)
    spool.log(a, "hello")
    spool.finish(spool.claim("w").claim, State.DONE)
    spool.finish(spool.claim("w").claim, State.FAILED, error="x")
    assert spool.clear(older_than=timedelta(days=1)) == []
    assert spool.clear() == [a]
    assert not spool.log_path(a).exists() and out.is_dir()
    assert [e.id for e in spool.jobs()] == [b]
    with pytest.raises(WrongState):
        spool.clear([State.PENDING])


def test_hand_dropped_file_is_adopted_relative_to_the_spool_parent(spool, tmp_path):
    write_config(spool.dir("pending") / "my job.toml", dataset="ds", steps=4)
    entries = spool.jobs()
    assert [(e.id, e.state, e.job.meta.name) for e in entries] == [(1, State.PENDING, "my job")]
    assert entries[0].job.config.data.dataset == str(tmp_path / "ds")
    assert files(spool, "pending") == ["000001.toml"]
    assert "adopted pending/my job.toml" in spool.log_path(1).read_text()


def test_unsettled_drop_is_left_alone(tmp_path):
    (tmp_path / "ds").mkdir()
    spool = Spool(tmp_path / "spool", settle_seconds=3600)
    spool.create()
    (spool.dir("pending") / "x.toml").write_text("[data\n")
    assert spool.jobs() == [] and files(spool, "pending") == ["x.toml"]


def test_broken_files_are_moved_aside_untouched(spool, cfg):
    junk = b"[data]\ndataset = 3\n\xff"
    (spool.dir("pending") / "broken.toml").write_bytes(junk)
    (spool.dir("pending") / "notes.txt").write_text("ignored")
    job_id = spool.submit(cfg)
    (spool.dir("pending") / "000001.toml").write_text("[job]\nid = 1\n[data\n")  # hand-broken
    entries, problems = spool.scan()
    assert entries == []
    assert (spool.dir("invalid") / "broken.toml").read_bytes() == junk
    origins = sorted(p.origin for p in problems)
    assert origins == ["pending/000001.toml", "pending/broken.toml"]
    assert all(p.error for p in problems)
    assert files(spool, "pending") == ["notes.txt"]
    with pytest.raises(JobNotFound):
        spool.get(job_id)


def test_copy_of_a_finished_job_dropped_in_pending_becomes_a_new_job(spool, cfg):
    job_id = spool.submit(cfg)
    spool.finish(spool.claim("w").claim, State.DONE, step=5)
    (spool.dir("pending") / "again.toml").write_bytes((spool.dir("done") / "000001.toml")
                                                       .read_bytes())
    (new,) = spool.jobs(State.PENDING)
    assert new.id == job_id + 1 and new.job.meta.step is None
    assert new.job.output_dir().name == f"lora_r4_job{new.id}"


def test_failed_job_moved_back_by_hand_runs_again(spool, cfg):
    job_id = spool.submit(cfg)
    spool.finish(spool.claim("w").claim, State.FAILED, error="x", checkpoint="/c")
    os.rename(spool.dir("failed") / "000001.toml", spool.dir("pending") / "000001.toml")
    claim = spool.claim("w2").claim
    assert claim.id == job_id and claim.job.meta.checkpoint == "/c"
    assert claim.job.meta.error is None


def test_unique_returns_the_existing_id(spool, cfg):
    a = spool.submit(cfg, unique=True)
    assert spool.submit(cfg, unique=True) == a
    assert spool.submit(cfg, unique=True, name="other name, same config") == a
    assert spool.submit(cfg, unique=True, optimization__steps=2) != a
    spool.finish(spool.claim("w").claim, State.DONE)
    b = spool.submit(cfg, unique=True)  # only pending/running ones count
    assert b not in (a,)


def test_dependencies_wait_then_fail_with_their_parent(spool, cfg):
    parent = spool.submit(cfg)
    child = spool.submit(cfg, after=[parent])
    grandchild = spool.submit(cfg, after=[child])
    with pytest.raises(ConfigError, match=r"job\.after"):
        spool.submit(cfg, after=[99])
    claim = spool.claim("w").claim
    assert claim.id == parent
    assert spool.claim("w").claim is None  # the child waits
    spool.finish(claim, State.FAILED, error="x")
    assert spool.claim("w").claim is None
    assert spool.get(child).job.meta.error == f"dependency {parent} failed"
    spool.claim("w")
    assert spool.get(grandchild).state is State.FAILED


def test_priority_and_replace_pending(spool, cfg):
    job_id = spool.submit(cfg)
    spool.set_priority(job_id, 9)
    entry = spool.get(job_id)
    assert entry.job.meta.priority == 9
    original = entry.path.read_bytes()
    text = original.decode().replace("steps = 5", "steps = 3")
    spool.replace_pending(job_id, original, text)
    assert spool.get(job_id).job.config.optimization.steps == 3
    with pytest.raises(WrongState):  # changed since we read it
        spool.replace_pending(job_id, original, text)
    current = spool.get(job_id).path.read_bytes()
    claim = spool.claim("w").claim
    with pytest.raises(WrongState):
        spool.replace_pending(job_id, current, text)
    with pytest.raises(WrongState):
        spool.set_priority(job_id, 1)
    assert claim.job.config.optimization.steps == 3


def test_pause_is_stored_in_the_spool(spool, cfg):
    spool.pause()
    assert Spool(spool.path).paused
    spool.unpause()
    assert not Spool(spool.path).paused


def test_scan_with_reads_only_selected_files_and_counts_the_others(spool, cfg):
    for _ in range(4):
        spool.submit(cfg)
    for _ in range(3):
        claim = spool.claim("w").claim
        assert claim is not None
        spool.finish(claim, State.DONE)
    (spool.dir(State.FAILED) / "000009.toml").write_text("not a job, never read")
    read: list[int] = []

    def reader(path: Path, state: State) -> int:
        read.append(int(path.stem))
        return int(path.stem)

    scanned = spool.scan_with(reader, select=lambda st, job_id: st is State.PENDING
                              or job_id == 3)
    assert sorted(read) == [3, 4]
    assert [(st, job_id) for st, _, job_id in scanned.found] == [(State.DONE, 3),
                                                                  (State.PENDING, 4)]
    assert scanned.skipped == {State.DONE: 2, State.FAILED: 1} and scanned.problems == []
    assert spool.ids([State.DONE, State.FAILED]) == [1, 2, 3, 9]
    assert [e.id for e in spool.jobs()] == [1, 2, 3, 4]  # scan reads all, the broken file aside
    assert [p.origin for p in spool.scan()[1]] == ["failed/000009.toml"]
