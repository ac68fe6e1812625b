"""The command line at its boundary: numbers checked before use, spools made only by the commands
that own them, long pending lists folded, files not adopted yet shown, read-only spools read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, write_config

from ltxq import Spool
from ltxq.cli import cli
from ltxq.status import NEXT_PENDING


def ltxq(spool: Path, *args: str) -> tuple[int, str, str]:
    """Run `ltxq --spool SPOOL ARGS` in this process; return (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli, ["--spool", str(spool), *args])
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- numbers from a person -------------------------------------------------------------------


@pytest.mark.parametrize("args, option", [
    (["wait", "1", "--poll", "-5"], "--poll"),
    (["wait", "1", "--poll", "0"], "--poll"),
    (["wait", "1", "--poll", "nan"], "--poll"),
    (["wait", "1", "--poll", "inf"], "--poll"),
    (["wait", "1", "--poll", "1e400"], "--poll"),
    (["wait", "1", "--poll", "soon"], "--poll"),
    (["wait", "1", "--timeout", "-1"], "--timeout"),
    (["wait", "1", "--timeout", "nan"], "--timeout"),
    (["status", "--watch", "nan"], "--watch"),
    (["status", "--watch", "0"], "--watch"),
    (["clear", "--older-than", "99999999999999w"], "--older-than"),
    (["clear", "--older-than", "9" * 400 + "s"], "--older-than"),
    (["clear", "--older-than", "7 days"], "--older-than"),
    (["daemon", "--poll", "nan"], "--poll"),
    (["daemon", "--poll", "-1"], "--poll"),
    (["daemon", "--poll", "1e12"], "--poll"),
    (["daemon", "--cancel-grace", "nan"], "--cancel-grace"),
    (["daemon", "--cancel-grace", "-1"], "--cancel-grace"),
])
def test_bad_numbers_exit_2_with_one_line_naming_the_option(tmp_path, args, option):
    code, out, err = ltxq(tmp_path / "spool", *args)
    assert code == 2, (out, err)
    assert option in one_line_error(err)
    assert not (tmp_path / "spool").exists()  # refused before any spool is made


def test_a_spool_path_naming_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    code, _, err = ltxq(tmp_path / "f", "status")
    assert code == 2 and "--spool" in one_line_error(err)


def test_a_huge_duration_says_too_large(tmp_path):
    code, _, err = ltxq(tmp_path / "spool", "clear", "--older-than", "99999999999999w")
    assert code == 2 and "too large" in one_line_error(err)


def test_good_numbers_still_work(tmp_path):
    spool = tmp_path / "spool"
    Spool(spool).create()
    assert ltxq(spool, "clear", "--older-than", "1w2d")[0] == 0
    assert ltxq(spool, "clear", "--older-than", "36500d")[0] == 0
    code, _, err = ltxq(spool, "wait", "7", "--poll", "0.5", "--timeout", "0")
    assert code == 1 and "no job 7" in err  # the numbers passed; the job is what is missing


# --- who makes a spool -----------------------------------------------------------------------

READERS = [["status"], ["status", "--json"], ["status", "--all"], ["cancel", "1"],
           ["resume", "1"], ["logs", "1"], ["clear"], ["priority", "1", "2"], ["edit", "1"],
           ["wait", "1"], ["pause"], ["unpause"], ["workers"]]


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_commands_other_than_submit_and_daemon_need_a_spool_and_make_none(tmp_path, args):
    missing = tmp_path / "nowhere" / "spool"
    code, out, err = ltxq(missing, *args)
    assert code == 1 and out == ""
    assert one_line_error(err) == f"ltxq: no spool at {missing}"
    assert not missing.exists() and not missing.parent.exists()


def test_submit_makes_a_spool_in_a_new_or_empty_folder(tmp_path):
    write_config(tmp_path / "job.toml", dataset=tmp_path / "ds")
    (tmp_path / "ds").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    for spool in (tmp_path / "new" / "spool", empty):
        assert ltxq(spool, "submit", str(tmp_path / "job.toml"))[:2] == (0, "1\n")
        assert (spool / "pending" / "000001.toml").is_file()
        assert ltxq(spool, "submit", str(tmp_path / "job.toml"))[:2] == (0, "2\n")  # a spool


def test_invalid_submit_makes_no_spool(tmp_path):
    (tmp_path / "bad.toml").write_text("[lora]\nrank = 4\n")
    code, _, err = ltxq(tmp_path / "spool", "submit", str(tmp_path / "bad.toml"))
    assert code == 2 and "data.dataset" in one_line_error(err)
    assert not (tmp_path / "spool").exists()


@pytest.mark.parametrize("command", [["submit", "JOB"], ["daemon", "--exit-when-idle"]])
def test_no_spool_is_made_in_a_folder_that_holds_other_things(tmp_path, command):
    write_config(tmp_path / "job.toml", dataset=tmp_path / "ds")
    (tmp_path / "ds").mkdir()
    args = [str(tmp_path / "job.toml") if a == "JOB" else a for a in command]
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    for spool in (home, Path("/")):
        before = sorted(os.listdir(spool))
        code, _, err = ltxq(spool, *args)
        assert code == 2, err
        assert str(spool) in one_line_error(err)
        assert sorted(os.listdir(spool)) == before


def test_daemon_makes_a_spool(tmp_path):
    spool = tmp_path / "spool"
    code, _, err = ltxq(spool, "daemon", "--exit-when-idle", "--trainer",
                        "tests.fake_trainer:train")
    assert code == 0, err
    assert (spool / "pending").is_dir()
    assert ltxq(spool, "status")[:2] == (0, "no jobs\n")


# --- long pending lists ----------------------------------------------------------------------


@pytest.fixture
def long_queue(tmp_path: Path) -> Iterator[Spool]:
    """A spool of NEXT_PENDING + 5 pending jobs; jobs 4 and 9 have priority 5, job 7 -1."""
    (tmp_path / "ds").mkdir()
    write_config(tmp_path / "job.toml", dataset=tmp_path / "ds")
    spool = Spool(tmp_path / "spool")
    for i in range(1, NEXT_PENDING + 6):
        priority = {4: 5, 9: 5, 7: -1}.get(i, 0)
        assert spool.submit(tmp_path / "job.toml", priority=priority) == i
    yield spool


def shown_ids(table: str) -> list[int]:
    """Return the ids of the table's job rows (not of the summary lines)."""
    rows = [line.split() for line in table.splitlines()]
    return [int(r[0]) for r in rows if len(r) >= 4 and r[0].isdigit() and r[1] in STATES]


STATES = {"pending", "running", "done", "failed", "cancelled"}


def test_status_shows_the_next_pending_jobs_to_run_and_folds_the_rest(long_queue):
    total = NEXT_PENDING + 5
    code, table, _ = ltxq(long_queue.path, "status")
    assert code == 0
    run_order = [4, 9] + [i for i in range(1, total + 1) if i not in (4, 9, 7)] + [7]
    assert sorted(shown_ids(table)) == sorted(run_order[:NEXT_PENDING])
    assert "  ... and 5 more pending (--all shows every job)" in table.splitlines()
    assert f"{total} pending" in table
    everything = ltxq(long_queue.path, "status", "--all")[1]
    assert sorted(shown_ids(everything)) == list(range(1, total + 1))
    assert "more pending" not in everything
    records = json.loads(ltxq(long_queue.path, "status", "--json")[1])
    assert [r["id"] for r in records] == list(range(1, total + 1))  # --json never folds


def test_a_new_priority_changes_what_is_shown(long_queue):
    last = NEXT_PENDING + 5
    ltxq(long_queue.path, "status")  # the priorities cache is warm (or the files are new)
    assert last not in shown_ids(ltxq(long_queue.path, "status")[1])
    assert ltxq(long_queue.path, "priority", str(last), "9")[0] == 0
    assert last in shown_ids(ltxq(long_queue.path, "status")[1])


def test_folding_with_a_name_filter_keeps_the_next_pending(long_queue):
    table = ltxq(long_queue.path, "status", "--name", "job")[1]
    assert len(shown_ids(table)) == NEXT_PENDING and "5 more pending" in table


# --- files not adopted yet, read-only spools -------------------------------------------------


def test_a_file_just_dropped_into_pending_is_shown(tmp_path):
    spool = tmp_path / "spool"
    Spool(spool).create()
    write_config(spool / "pending" / "cake.toml", dataset=tmp_path)  # younger than the settle time
    code, table, _ = ltxq(spool, "status")
    assert code == 0 and "no jobs" not in table
    lines = table.splitlines()
    assert "Not adopted yet:" in lines
    assert any("cake.toml" in line and "settling" in line for line in lines)
    records = json.loads(ltxq(spool, "status", "--json")[1])
    assert [(r["state"], r["name"], r["id"]) for r in records] == [("dropped", "cake.toml", None)]
    assert "settling" in records[0]["reason"]


def test_status_on_a_spool_this_user_cannot_write_prints_the_table(long_queue, monkeypatch):
    """os.access says 'not writable' (the tests run as root, for whom chmod changes nothing)."""
    write_config(long_queue.dir("pending") / "cake.toml", dataset=long_queue.path)
    old = time.time() - 60
    os.utime(long_queue.dir("pending") / "cake.toml", (old, old))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode & os.W_OK
                        else real_access(path, mode, **kw))
    code, table, err = ltxq(long_queue.path, "status")
    assert code == 0, err
    assert len(shown_ids(table)) == NEXT_PENDING
    assert any("cake.toml" in line and "cannot adopt" in line for line in table.splitlines())
    assert (long_queue.dir("pending") / "cake.toml").exists()  # not adopted, not moved


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        sys.executable, "-c", "import ltxq"], cwd=REPO, capture_output=True,
                       check=False)
    return p.returncode == 0


@pytest.mark.skipif(not _nobody_can_run_python(), reason="needs root, setpriv and a venv "
                    "that user nobody can run")
def test_status_as_another_user_on_a_read_only_spool():
    """A real permission check: the spool belongs to root, `status` runs as user nobody."""
    root = Path(tempfile.mkdtemp(prefix="ltxq-ro-"))  # tmp_path is private to root
    try:
        os.chmod(root, 0o755)
        (root / "ds").mkdir()
        write_config(root / "job.toml", dataset=root / "ds")
        spool = Spool(root / "spool")
        for _ in range(NEXT_PENDING + 1):  # folded: the pending order is read too
            spool.submit(root / "job.toml")
        write_config(spool.dir("pending") / "cake.toml", dataset=root / "ds")
        before = {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}
        p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            sys.executable, "-m", "ltxq", "--spool", str(spool.path), "status"],
                           cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == 0, p.stderr
        assert shown_ids(p.stdout) == list(range(1, NEXT_PENDING + 1))
        assert "and 1 more pending" in p.stdout and f"{NEXT_PENDING + 1} pending" in p.stdout
        assert any("cake.toml" in line and "cannot adopt" in line
                   for line in p.stdout.splitlines())
        assert {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")} == before
    finally:
        shutil.rmtree(root)
