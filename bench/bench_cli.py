"""Command-line cost: `status`, `status --json` and `submit` against the bare interpreter start.

Spools of 10, 1,000 and 10,000 jobs are filled by writing job files the way `submit` does
(most jobs done with their logs, some failed/cancelled, a few pending and one running), then
each command runs REPEAT times as a fresh process, alternating with `python -c pass` so both
see the same machine. Prints medians and the ratio to the floor, and checks that none imports
torch. `status` keeps derived caches in spool/tmp/ (ltxq.status.statcache): "cold cache"
deletes them before each run, the figure for the first `status` after 10,000 files appeared at
once; it parses the files in one worker process per CPU (ltxq.status.forkpool), so it depends
on the CPU count.

A second spool of the same size holds only pending jobs (priorities 0-3): its `status` shows
the next 20 to run and folds the rest, ordering them from the spool's claim index.

Targets (issue 5): status at 10,000 jobs within 10x the floor (also with 10,000 pending),
`status --json --state all` under 2 s, submit within 8x.

    .venv/bin/python bench/bench_cli.py [--sizes 10,1000,10000] [--repeat 7] [--before TREE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ltxq.job import dump_job, job_from_dict, now
from ltxq.spool import Spool, State, file_name
from ltxq.status.forkpool import cpus

CONFIG = """
[model]
source = "tiny-random"
[data]
dataset = "{dataset}"
resolution = "64x64x9"
[lora]
rank = 4
[optimization]
steps = 20
[checkpoints]
interval = 5
[validation]
interval = 10
video = "64x64x9"
"""


def fill(spool_dir: Path, dataset: Path, count: int, *, all_pending: bool = False) -> None:
    """Write COUNT jobs into a fresh spool: 90% done, the rest spread over the other states.

    Done and failed jobs ran: they have a start time, a worker and a log of 20 progress lines,
    as a daemon leaves them; cancelled ones were cancelled while pending. ALL_PENDING: every
    job waits instead, with priorities 0-3 (a backlog the table folds to the next 20 to run).
    """
    spool = Spool(spool_dir)
    spool.create()
    base = job_from_dict(__import__("tomllib").loads(CONFIG.format(dataset=dataset)))
    stamp = now()
    for i in range(1, count + 1):
        state = (State.PENDING if all_pending else State.RUNNING if i == count else
                 State.PENDING if i > count - 5 else State.FAILED if i % 20 == 0 else
                 State.CANCELLED if i % 33 == 0 else State.DONE)
        ran = state in (State.RUNNING, State.DONE, State.FAILED)
        finished = stamp if state in (State.DONE, State.FAILED, State.CANCELLED) else None
        job = base.with_meta(id=i, name=f"job-{i}", submitted_at=stamp, finished_at=finished,
                             priority=i % 4 if all_pending else 0,
                             started_at=stamp if ran else None,
                             worker="bench-host:4242" if ran else None,
                             step=20 if state is State.DONE else None,
                             error="boom" if state is State.FAILED else None)
        (spool_dir / state.value / file_name(i)).write_text(dump_job(job))
        if ran:
            steps = 10 if state is State.RUNNING else 20
            (spool_dir / "logs" / f"{i:06d}.log").write_text(
                "2026-11-28 10:00:00 started on bench-host:4242 (attempt 1 of 3)\n"
                + "".join(f"2026-11-28 10:00:{s % 60:02d} step {s}/20 loss 1.{s:04d} lr 2.00e-04 "
                          f"0.030 s/step eta 0:00:01\n" for s in range(1, steps + 1)))
    (spool_dir / "locks" / "last-id").write_text(str(count))
    # A spool's files are older than status's settle time (2 s) except the newest few.
    old = time.time() - 600
    for folder in ("pending", "running", "done", "failed", "cancelled", "logs"):
        for path in (spool_dir / folder).iterdir():
            os.utime(path, (old, old))


def drop_caches(spool_dir: Path) -> None:
    """Remove status's derived caches, so the next status reads and validates every file."""
    for path in (spool_dir / "tmp").glob("status-*.cache.json"):
        path.unlink()


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return time.perf_counter() - start


def imports_torch(args: list[str], env: dict[str, str]) -> bool:
    code = ("import sys; sys.argv = ['ltxq', *sys.argv[1:]]\n"
            "from ltxq.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                         text=True, check=False)
    return "NOTORCH" not in out.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--before", metavar="TREE",
                        help="also time every command with the ltxq package of TREE (e.g. a "
                             "`git worktree` of an older commit), alternating, on the same spools")
    args = parser.parse_args()
    ltxq = [sys.executable, "-m", "ltxq"]
    print(f"command-line cost, median of {args.repeat} runs, ratio to `python -c pass`, "
          f"{cpus()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        # `python -m ltxq` puts the working directory first on sys.path: run from a folder
        # without an ltxq package, so that --before's PYTHONPATH decides which one loads.
        os.chdir(tmp_path)
        dataset = tmp_path / "data"
        dataset.mkdir()
        job_file = tmp_path / "job.toml"
        job_file.write_text(CONFIG.format(dataset=dataset))
        for size in (int(s) for s in args.sizes.split(",")):
            spool_dir, backlog = tmp_path / f"spool{size}", tmp_path / f"pending{size}"
            fill(spool_dir, dataset, size)
            fill(backlog, dataset, size, all_pending=True)
            env = {**os.environ, "LTXQ_SPOOL": str(spool_dir)}
            json_all = [*ltxq, "--spool", str(spool_dir), "status", "--json", "--state", "all"]
            commands = {
                "status": [*ltxq, "--spool", str(spool_dir), "status"],
                "status --json --state all": json_all,
                "  the same, cold cache": json_all,
                "status, all jobs pending": [*ltxq, "--spool", str(backlog), "status"],
                "submit": [*ltxq, "--spool", str(spool_dir), "submit", str(job_file)],
            }
            trees = {"": env}
            if args.before:
                trees[" [before]"] = {**env, "PYTHONPATH": str(Path(args.before).resolve())}
            floor = []
            results: dict[str, list[float]] = {name + tag: [] for name in commands for tag in trees}
            for _ in range(args.repeat):
                floor.append(timed([sys.executable, "-c", "pass"], env))
                for name, cmd in commands.items():
                    for tag, tree_env in trees.items():
                        if "cold" in name:
                            drop_caches(spool_dir)
                        results[name + tag].append(timed(cmd, tree_env))
            base = statistics.median(floor)
            print(f"\n{size:>6} jobs   python -c pass          {base * 1000:8.1f} ms")
            for name, times in results.items():
                med = statistics.median(times)
                torch = imports_torch(commands[name.removesuffix(" [before]")][3:], env)
                verdict = target(name, med, base) if size >= 10_000 else ""
                print(f"{'':13}{name:<26}{med * 1000:8.1f} ms  x{med / base:6.1f}"
                      f"{'  IMPORTS TORCH' if torch else ''}{verdict}")


def target(name: str, seconds: float, floor: float) -> str:
    """Return the issue's target for NAME at 10,000 jobs, with PASS or FAIL."""
    if name in ("status", "status, all jobs pending"):
        return f"  target x10: {'PASS' if seconds <= 10 * floor else 'FAIL'}"
    if name.startswith("status --json") or "cold" in name:
        return f"  target < 2 s: {'PASS' if seconds < 2 else 'FAIL'}"
    if name == "submit":
        return f"  target x8: {'PASS' if seconds <= 8 * floor else 'FAIL'}"
    return ""


if __name__ == "__main__":
    main()
