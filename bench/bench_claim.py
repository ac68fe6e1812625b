"""What a claim costs as the backlog grows (issue 11, section 3).

A spool is filled with N pending jobs written the way `submit` writes them (the job file, then a
line in the claim journal). Each figure is the median over REPEAT fresh processes, the sizes
measured alternately so drift hits both alike:
- first claim, journal: a new daemon's first claim after the submits (reads the one job it takes);
- first claim, no index: the same with tmp/ deleted (every pending file read once, then cached);
- blocked backlog pass: a claim pass over N jobs that all wait `after` a running job, with the
  spool unchanged since the last pass (what an idle daemon does every poll) and forced in full.
Targets: first claim from 10,000 pending < 0.5 s, independent of the backlog's size.

    .venv/bin/python bench/bench_claim.py [--sizes 1000,10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from bench_cli import CONFIG  # the same tiny job the command-line bench queues

from ltxq.job import job_from_dict
from ltxq.spool import Spool, State
from ltxq.spool.claimindex import ClaimIndex

FIRST_CLAIM = """
import sys, time
t = time.perf_counter()
from ltxq.spool import Spool
claim = Spool(sys.argv[1]).claim("bench:1").claim
print(time.perf_counter() - t, claim.id if claim else None)
"""


def fill(root: Path, count: int, *, blocked: bool = False) -> Spool:
    """Make ROOT/spool with COUNT pending jobs (waiting for a running job 1 if BLOCKED)."""
    dataset = root / "ds"
    dataset.mkdir(parents=True, exist_ok=True)
    spool = Spool(root / "spool", settle_seconds=0)
    spool.create()
    base = job_from_dict(tomllib.loads(CONFIG.format(dataset=dataset)))
    if blocked:
        spool.publish(base)
        spool.claim("bench:0")  # job 1 runs (its lock dropped: only the file matters here)
    index = ClaimIndex(spool)
    old = time.time() - 60
    first = len(spool.ids("all")) + 1
    for job_id in range(first, first + count):
        job = base.with_meta(id=job_id, key=f"{job_id:032x}", priority=job_id % 3,
                             after=[1] if blocked else [])
        path = spool.job_path(State.PENDING, job_id)
        spool.write_job(path, job)
        # As if submitted a minute ago: past the index's 2 s window for recent files.
        os.utime(path, (old, old))
        index.record(path, job)
    for name in (*State, "control"):
        os.utime(spool.path / name, (old, old))
    return spool


def first_claim(template: Path, work: Path, *, keep_index: bool) -> float:
    """Copy the filled spool, then time a fresh process's first claim on it."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(template, work, copy_function=os.link)  # links keep the inodes and mtimes
    shutil.rmtree(work / "spool" / "tmp")
    (work / "spool" / "tmp").mkdir()
    if keep_index:
        for name in os.listdir(template / "spool" / "tmp"):
            shutil.copy2(template / "spool" / "tmp" / name, work / "spool" / "tmp" / name)
    out = subprocess.run([sys.executable, "-c", FIRST_CLAIM, str(work / "spool")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[1] != "None", "nothing was claimed"
    return float(out[0])


def blocked_pass(spool: Spool, repeat: int) -> tuple[float, float]:
    """Median seconds of an unchanged-spool pass and of a forced full pass."""
    spool.claim("bench:2")  # warm the index
    quick, full = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        assert spool.claim("bench:2").claim is None
        quick.append(time.perf_counter() - t)
        spool._idle = None  # noqa: SLF001 - force what a changed spool costs
        t = time.perf_counter()
        assert spool.claim("bench:2").claim is None
        full.append(time.perf_counter() - t)
    return statistics.median(quick), statistics.median(full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        templates = {n: fill(root / f"t{n}", n).path.parent for n in sizes}
        runs: dict[tuple[int, bool], list[float]] = {}
        for _ in range(args.repeat):
            for n in sizes:
                for keep in (True, False):
                    runs.setdefault((n, keep), []).append(
                        first_claim(templates[n], root / "work", keep_index=keep))
        for n in sizes:
            journal = statistics.median(runs[(n, True)])
            cold = statistics.median(runs[(n, False)])
            print(f"first claim from {n:>6,} pending: {journal * 1000:7.1f} ms with the submit "
                  f"journal, {cold * 1000:7.1f} ms with no index (every file read once)")
        for n in sizes:
            spool = fill(root / f"b{n}", n, blocked=True)
            quick, full = blocked_pass(spool, args.repeat)
            print(f"blocked backlog of {n:>6,}: claim pass {quick * 1000:6.2f} ms when nothing "
                  f"changed, {full * 1000:7.1f} ms in full (median of {args.repeat})")


if __name__ == "__main__":
    main()
