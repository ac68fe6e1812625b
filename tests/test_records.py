"""Status records through the stat-keyed cache and the folded table: the same answers as reading
every file with the full reader, whatever changed on disk in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_config

from ltxq import Spool
from ltxq.progress import progress_message
from ltxq.spool import State
from ltxq.status import NEXT_PENDING, RECENT_FINISHED
from ltxq.status.reader import StatusReader
from ltxq.status.records import invalid_record, job_record
from ltxq.status.statcache import MISSING, StatCache


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    (tmp_path / "ds").mkdir()
    write_config(tmp_path / "job.toml", steps=5)
    return Spool(tmp_path / "spool", settle_seconds=0)


def fill(spool: Spool, done: int = 3) -> None:
    """Jobs in every state: DONE done (with progress logs), one failed, cancelled, running,
    pending; a running log with progress."""
    cfg = spool.path.parent / "job.toml"
    for _ in range(done + 2):
        spool.submit(cfg)
    for i in range(done + 1):
        claim = spool.claim("host:1").claim
        assert claim is not None
        spool.log(claim.id, progress_message(5, 5, 0.25 + i, 2e-4, 0.03))
        if i < done:
            spool.finish(claim, State.DONE, step=5)
        else:
            spool.finish(claim, State.FAILED, error="boom")
    spool.cancel(spool.submit(cfg))
    running = spool.claim("host:2", device="cpu").claim
    assert running is not None
    spool.log(running.id, progress_message(2, 5, 0.5, 2e-4, 0.03))
    spool.submit(cfg, name="waiting")


def age(spool: Spool, seconds: float = 60.0) -> None:
    """Make every job file and log older than the cache's settle time."""
    past = time.time() - seconds
    for folder in (*State, "logs"):
        for path in spool.dir(folder).iterdir():
            os.utime(path, (past, past))


def full_records(spool: Spool) -> list[dict]:
    """The records as the full reader gives them: every file parsed and validated."""
    entries, problems = spool.scan()
    return [job_record(spool, e) for e in entries] + [invalid_record(p) for p in problems]


def forbid_parsing(monkeypatch: pytest.MonkeyPatch, spool: Spool) -> list[Path]:
    """Record every job file the spool parses from now on; return that list."""
    parsed: list[Path] = []
    original = spool.parse_file

    def spy(data: bytes, path: Path, state: State):
        parsed.append(path)
        return original(data, path, state)

    monkeypatch.setattr(spool, "parse_file", spy)
    return parsed


def test_cached_records_equal_the_full_reader_and_skip_parsing(spool, monkeypatch):
    fill(spool)
    age(spool)
    expected = full_records(spool)
    assert {r["state"] for r in expected} == {"pending", "running", "done", "failed", "cancelled"}
    assert any(r["loss"] == 0.25 for r in expected)  # progress from the logs is part of it
    assert StatusReader(spool, use_cache=False).view("all").records == expected
    cold = StatusReader(spool).view("all").records
    assert cold == expected
    assert sorted(p.name for p in spool.dir("tmp").glob("status-*.cache.json")) == [
        f"status-{s}.cache.json" for s in sorted(str(s) for s in State)]
    parsed = forbid_parsing(monkeypatch, spool)
    warm = StatusReader(spool).view("all").records
    assert warm == expected
    assert parsed == []  # every file came from the cache
    assert json.dumps(warm) == json.dumps(expected)  # same keys in the same order


def test_a_rewritten_moved_or_grown_file_is_read_again(spool, monkeypatch):
    fill(spool)
    age(spool)
    StatusReader(spool).view("all")  # warm
    pending = spool.jobs(State.PENDING)[0].id
    spool.set_priority(pending, 7)  # rewritten by rename: a new inode
    done = spool.dir(State.DONE) / "000001.toml"
    text = done.read_text()
    done.write_text(text.replace('name = "job"', 'name = "renamed-by-hand"'))  # in place
    os.rename(spool.dir(State.DONE) / "000002.toml", spool.dir(State.FAILED) / "000002.toml")
    spool.log(3, progress_message(5, 5, 9.5, 2e-4, 0.03))  # a log that grew
    parsed = forbid_parsing(monkeypatch, spool)
    records = {r["id"]: r for r in StatusReader(spool).view("all").records}
    assert records[pending]["priority"] == 7
    assert records[1]["name"] == "renamed-by-hand"
    assert records[2]["state"] == "failed"
    assert records[3]["loss"] == 9.5
    assert {p.name for p in parsed} == {f"{pending:06d}.toml", "000001.toml", "000002.toml"}
    assert full_records(spool) == StatusReader(spool).view("all").records


def test_files_younger_than_the_settle_time_are_never_cached(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    st = os.stat(path)
    cache = StatCache(tmp_path / "c.json", tmp_path, "v1")
    cache.put("f", st, {"a": 1})
    cache.save()
    assert StatCache(tmp_path / "c.json", tmp_path, "v1").get("f", st) is MISSING
    later = StatCache(tmp_path / "c.json", tmp_path, "v1", clock=time.time() + 10)
    later.put("f", st, {"a": 1})
    later.save()
    assert StatCache(tmp_path / "c.json", tmp_path, "v1").get("f", st) == {"a": 1}
    assert StatCache(tmp_path / "c.json", tmp_path, "v2").get("f", st) is MISSING
    path.write_text("xy")  # another size: another key
    assert StatCache(tmp_path / "c.json", tmp_path, "v1").get("f", os.stat(path)) is MISSING


def test_a_broken_or_foreign_cache_is_an_empty_one(spool):
    fill(spool)
    age(spool)
    expected = full_records(spool)
    for state in State:
        (spool.dir("tmp") / f"status-{state}.cache.json").write_text("{not json")
    assert StatusReader(spool).view("all").records == expected
    doc = json.loads((spool.dir("tmp") / "status-done.cache.json").read_text())
    assert doc["entries"]  # rebuilt
    for entry in doc["entries"].values():
        entry[1] = "not facts"  # a cache of another meaning, under the right keys
    doc["version"] = "0:old"
    (spool.dir("tmp") / "status-done.cache.json").write_text(json.dumps(doc))
    assert StatusReader(spool).view("all").records == expected


def test_cache_drops_files_that_left_the_folder(spool):
    fill(spool)
    age(spool)
    StatusReader(spool).view("all")
    spool.clear([State.DONE])
    StatusReader(spool).view("all")
    doc = json.loads((spool.dir("tmp") / "status-done.cache.json").read_text())
    assert doc["entries"] == {}


def test_default_view_reads_only_what_it_shows_and_counts_the_rest(spool, monkeypatch):
    fill(spool, done=RECENT_FINISHED + 5)
    age(spool)
    StatusReader(spool).view("all")  # a warm cache must not change what is read or shown
    parsed = forbid_parsing(monkeypatch, spool)
    view = StatusReader(spool).view(None, fold=True)
    finished = spool.ids([State.DONE, State.FAILED, State.CANCELLED])
    recent = finished[-RECENT_FINISHED:]
    shown = {r["id"]: r["state"] for r in view.records}
    assert [i for i, s in shown.items() if s in ("done", "failed", "cancelled")] == recent
    assert {s for s in shown.values()} >= {"pending", "running"}
    # The shown finished files are read, pending and running ones come from their (small)
    # caches, and no folded file is read at all.
    assert sorted(int(p.stem) for p in parsed) == recent
    all_records = full_records(spool)
    counts: dict[str, int] = {}
    for r in all_records:
        if r["id"] not in shown:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
    assert view.folded == counts and sum(counts.values()) == len(finished) - RECENT_FINISHED
    assert [r for r in all_records if r["id"] in shown] == view.records


def test_default_view_reads_only_the_next_pending_jobs(spool, monkeypatch):
    cfg = spool.path.parent / "job.toml"
    for i in range(1, NEXT_PENDING + 11):
        spool.submit(cfg, priority=3 if i % 7 == 0 else 0)
    age(spool)
    StatusReader(spool).view("all")  # a warm cache of every file must not change what is read
    run_order = sorted(spool.ids(State.PENDING), key=lambda i: (-(3 if i % 7 == 0 else 0), i))
    parsed = forbid_parsing(monkeypatch, spool)
    view = StatusReader(spool).view(None, fold=True)
    shown = [r["id"] for r in view.records]
    assert sorted(shown) == sorted(run_order[:NEXT_PENDING]) and view.folded == {"pending": 10}
    assert sorted(int(p.stem) for p in parsed) == sorted(shown)  # nothing else was parsed
    assert [r for r in full_records(spool) if r["id"] in shown] == view.records
    parsed.clear()
    assert StatusReader(spool).view(None, fold=True) == view
    assert parsed == []  # the shown files come from their own small cache now
    # A hand edit in place (same inode) is seen: the order comes from stat-keyed facts.
    last = spool.dir(State.PENDING) / f"{run_order[-1]:06d}.toml"
    last.write_text(last.read_text().replace("priority = 0", "priority = 9"))
    assert run_order[-1] in [r["id"] for r in StatusReader(spool).view(None, fold=True).records]


def test_invalid_files_still_show_with_their_error(spool):
    fill(spool, done=RECENT_FINISHED + 2)
    age(spool)
    broken = spool.dir(State.DONE) / "000099.toml"
    broken.write_text("[job]\nid = 99\nbogus = 1\n")
    (spool.dir(State.PENDING) / "dropped.toml").write_text("not = [toml")
    os.utime(spool.dir(State.PENDING) / "dropped.toml", (0, 0))
    for fold in (True, False):
        records = StatusReader(spool).view(None, fold=fold).records
        invalid = {r["origin"]: r["error"] for r in records if r["state"] == "invalid"}
        assert "job.bogus" in invalid["done/000099.toml"]
        assert "invalid TOML" in invalid["pending/dropped.toml"]
    assert StatusReader(spool).view("all").records == full_records(spool)


# Run in a fresh interpreter: fork_map rightly declines while other threads are alive, and
# earlier tests leave some behind (tqdm's monitor, imageio's reader).
_POOLED_STATUS = """
import json, sys
from pathlib import Path
import ltxq.status.forkpool, ltxq.status.reader
from ltxq.status.reader import StatusReader
from ltxq.spool import Spool

ltxq.status.forkpool.cpus = lambda: 2  # fork even on a one-core machine
pooled, parsed = [], []

def spy_fork_map(fn, items, workers=None):
    results = ltxq.status.forkpool.fork_map(fn, items, workers)
    assert results is not None, "fork_map declined to fork"
    pooled.append(len(results))
    return results

ltxq.status.reader.fork_map = spy_fork_map
spool = Spool(Path(sys.argv[1]), settle_seconds=0)
parse = spool.parse_file
spool.parse_file = lambda data, path, state: parsed.append(str(path)) or parse(data, path, state)
records = StatusReader(spool, pool_min=1).view("all").records
print(json.dumps({"records": records, "pooled": pooled, "parsed": parsed}))
"""


def test_pooled_reading_gives_what_the_serial_reader_gives(spool):
    """Many uncached files are parsed in forked workers: same records, same errors, same caches."""
    fill(spool)
    age(spool)
    (spool.dir(State.DONE) / "000099.toml").write_text("[job]\nid = 99\nbogus = 1\n")
    (spool.dir(State.FAILED) / "000098.toml").write_text("[job\nid = 98\n")
    (spool.dir(State.DONE) / "000097.toml").write_bytes(b"\xff\xfe not utf-8")

    def caches() -> dict[str, str]:
        return {p.name: p.read_text() for p in spool.dir("tmp").glob("status-*.cache.json")}

    serial = StatusReader(spool, pool_min=None).view("all").records
    assert serial == full_records(spool)
    serial_caches = caches()
    for path in spool.dir("tmp").glob("status-*.cache.json"):
        path.unlink()
    out = subprocess.run([sys.executable, "-c", _POOLED_STATUS, str(spool.path)],
                         capture_output=True, text=True, check=True).stdout
    pooled = json.loads(out)
    assert pooled["pooled"] == [len(serial)]  # every job file, the 3 invalid ones included
    assert pooled["parsed"] == []  # none was parsed in the parent: the workers did it all
    assert pooled["records"] == json.loads(json.dumps(serial))
    invalid = {r["origin"]: r["error"] for r in pooled["records"] if r["state"] == "invalid"}
    assert "job.bogus" in invalid["done/000099.toml"]
    assert "invalid TOML" in invalid["failed/000098.toml"]
    assert "not UTF-8" in invalid["done/000097.toml"]
    assert caches() == serial_caches
