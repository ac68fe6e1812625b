"""Daemon costs: claim latency, idle CPU, a 4-daemon drain, and the job-to-job gap.

Everything runs through the real command line and the real trainer on the tiny-random model
(jobs of a few steps, no validation video), with a fresh preprocessing cache.

- claim latency: an idle daemon at the default poll (2 s) and `submit`; time until the file is
  in running/, median of ROUNDS (20) submits landing at varying points of the poll cycle.
  Target: median under 0.3 s (inotify wakes the daemon; the poll is the fallback).
- idle CPU: a daemon on an empty spool for IDLE seconds; CPU time / wall time. Target < 1%.
- idle CPU over a blocked backlog: BACKLOG (2,000) pending jobs all waiting `after` a job that
  another daemon runs for the whole measurement; the measured daemon at the default poll for
  IDLE seconds; CPU time / wall time. Target < 1%.
- drain: 4 daemons over JOBS tiny jobs; jobs per minute, and every job started exactly once
  (one "started on" line per log, every job in done/).
- gap: one daemon, two jobs on the same model and dataset; the time from a job's claim (first
  job) or the previous job's end (second job) to its first training step. Target: the second
  gap under 25% of the first.
- slurm (only when a Slurm controller answers, e.g. after `eval "$(bash ci/slurm/up)"`): the
  same SLURM_JOBS tiny jobs drained by one local daemon and by one `--executor slurm` daemon
  keeping one Slurm job in flight; seconds per job each, and every job started exactly once.
  What a Slurm job costs over the in-process daemon: a fresh process per job on the node.

    .venv/bin/python bench/bench_daemon.py [--jobs 200] [--idle 20] [--backlog 2000]
        [--only gap,claim,idle,backlog,drain,slurm] [--slurm-jobs 10]

claim and backlog run the fake trainer of tests/ (they measure the queue, not training).
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

LTXQ = [sys.executable, "-m", "ltxq"]
REPO = Path(__file__).resolve().parents[1]
FAKE = "tests.fake_trainer:train"
JOB = """
[job]
name = "{name}"
[model]
source = "tiny-random"
[data]
dataset = "{dataset}"
resolution = "64x64x9"
[lora]
rank = 4
[optimization]
steps = {steps}
[checkpoints]
interval = 0
[validation]
interval = 0
[output]
root = "{outputs}"
"""


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / "spool"
        self.env = {**os.environ, "LTXQ_SPOOL": str(self.spool),
                    "LTXQ_CACHE": str(root / "cache"), "PYTHONUNBUFFERED": "1"}
        self.dataset = root / "data"
        subprocess.run([*LTXQ, "demo-data", str(self.dataset), "--clips", "2"], env=self.env,
                       check=True, stdout=subprocess.DEVNULL)
        self.job_file = root / "job.toml"
        self.write_job(self.job_file, steps=3)

    def write_job(self, path: Path, steps: int, name: str = "bench") -> Path:
        path.write_text(JOB.format(name=name, dataset=self.dataset, steps=steps,
                                   outputs=self.root / "outputs"))
        return path

    def submit(self, *extra: str) -> int:
        out = subprocess.run([*LTXQ, "submit", str(self.job_file), *extra], env=self.env,
                             check=True, capture_output=True, text=True)
        return int(out.stdout.split()[0])

    def daemon(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*LTXQ, "daemon", *args], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def path(self, state: str, job_id: int) -> Path:
        return self.spool / state / f"{job_id:06d}.toml"

    def log(self, job_id: int) -> Path:
        return self.spool / "logs" / f"{job_id:06d}.log"

    def wait_for(self, predicate, timeout: float = 300.0, every: float = 0.002) -> float:
        start = time.perf_counter()
        while not predicate():
            if time.perf_counter() - start > timeout:
                raise TimeoutError("benchmark waited too long")
            time.sleep(every)
        return time.perf_counter()

    def first_step_logged(self, job_id: int) -> bool:
        log = self.log(job_id)
        return log.exists() and " step 1/" in log.read_text()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def fake_env(b: Bench) -> dict[str, str]:
    """The environment of a daemon that trains with the fake trainer of tests/."""
    return {**b.env, "LTXQ_TRAINER": FAKE,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process PID has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, seconds: float) -> float:
    """Return the share of one core process PID uses over the next SECONDS."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)


def published_to_claimed(b: Bench, timeout: float = 60.0) -> float:
    """Submit a job; return the seconds from its rename into pending/ to its claim's rename out
    (both seen through inotify in this process: submit's own start-up does not count)."""
    from inotify_simple import INotify, flags

    with INotify() as watch:
        watch.add_watch(str(b.spool / "pending"), flags.MOVED_TO | flags.MOVED_FROM)
        submit = subprocess.Popen([*LTXQ, "submit", str(b.job_file)], env=b.env,
                                  stdout=subprocess.DEVNULL)
        published = None
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for event in watch.read(timeout=100):
                now = time.perf_counter()
                if event.mask & flags.MOVED_TO and event.name.endswith(".toml"):
                    published = now
                elif event.mask & flags.MOVED_FROM and published is not None:
                    submit.wait()
                    return now - published
        raise TimeoutError("no claim seen")


def bench_claim(b: Bench, poll: float, rounds: int) -> None:
    subprocess.run([*LTXQ, "submit", str(b.job_file)], env=b.env, check=True,
                   stdout=subprocess.DEVNULL)  # makes the spool
    proc = subprocess.Popen([*LTXQ, "daemon", "--poll", str(poll)], env=fake_env(b),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        b.wait_for(lambda: b.path("done", 1).exists(), every=0.05)
        latencies = []
        for i in range(rounds):
            time.sleep(poll * ((0.37 * (i + 1)) % 1))  # land submits all over the poll cycle
            latencies.append(published_to_claimed(b))
    finally:
        stop(proc)
    med = statistics.median(latencies)
    print(f"claim latency after submit (poll {poll:.1f} s, {rounds} jobs, publish -> claim)  "
          f"median {med:.3f} s  max {max(latencies):.3f} s  target median < 0.3 s")


def bench_idle(b: Bench, seconds: float) -> None:
    proc = b.daemon("--poll", "2")
    time.sleep(3)  # past start-up
    share = cpu_share(proc.pid, seconds)
    stop(proc)
    print(f"idle daemon CPU over {seconds:.0f} s  {100 * share:.2f}% of one core  target < 1%")


def bench_backlog(b: Bench, seconds: float, backlog: int) -> None:
    slow = b.root / "slow"
    slow.mkdir()
    (slow / "SLOW").write_text("1")
    parent_file = b.root / "parent.toml"
    parent_file.write_text(JOB.format(name="parent", dataset=slow, steps=100000,
                                      outputs=b.root / "outputs"))
    parent = int(subprocess.run([*LTXQ, "submit", str(parent_file)], env=b.env, check=True,
                                capture_output=True, text=True).stdout)
    runner = subprocess.Popen([*LTXQ, "daemon", "--poll", "2"], env=fake_env(b),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b.wait_for(lambda: b.path("running", parent).exists(), every=0.05)
    subprocess.run([*LTXQ, "submit", "--after", str(parent), *[str(b.job_file)] * backlog],
                   env=b.env, check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen([*LTXQ, "daemon"], env=fake_env(b),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)  # past start-up and the first look at the backlog
        share = cpu_share(proc.pid, seconds)
    finally:
        stop(proc)
        stop(runner)
    print(f"idle daemon CPU over a blocked backlog of {backlog} jobs (default poll, {seconds:.0f} "
          f"s)  {100 * share:.2f}% of one core  target < 1%")


def bench_drain(b: Bench, jobs: int, daemons: int) -> None:
    ids = [b.submit() for _ in range(jobs)]
    start = time.perf_counter()
    procs = [b.daemon("--exit-when-idle", "--poll", "0.2") for _ in range(daemons)]
    for p in procs:
        p.wait(timeout=3600)
    took = time.perf_counter() - start
    done = sum(b.path("done", i).exists() for i in ids)
    starts = [b.log(i).read_text().count(" started on ") for i in ids]
    twice = [i for i, n in zip(ids, starts, strict=True) if n != 1]
    print(f"drain: {daemons} daemons, {jobs} jobs of 3 steps  {took:.1f} s  "
          f"{60 * jobs / took:.1f} jobs/min  done {done}/{jobs}  "
          f"jobs not started exactly once: {len(twice)} {twice[:5]}")


def drain_once(b: Bench, jobs: int, *daemon_args: str) -> tuple[float, int, int]:
    """Submit JOBS, drain them with one daemon; return (seconds, done, not started once)."""
    ids = [b.submit() for _ in range(jobs)]
    start = time.perf_counter()
    b.daemon("--exit-when-idle", "--poll", "0.2", *daemon_args).wait(timeout=3600)
    took = time.perf_counter() - start
    done = sum(b.path("done", i).exists() for i in ids)
    wrong = sum(b.log(i).read_text().count(" started on ") != 1 for i in ids)
    return took, done, wrong


def bench_slurm(b: Bench, jobs: int) -> None:
    from ltxq.executors.slurm import client as slurm

    if not slurm.available():
        print('slurm: skipped, no Slurm controller answers (eval "$(bash ci/slurm/up)")')
        return
    local = drain_once(b, jobs)
    on_slurm = drain_once(b, jobs, "--executor", "slurm", "--max-jobs", "1")
    for name, (took, done, wrong) in (("local daemon", local), ("slurm, 1 in flight", on_slurm)):
        print(f"{name:<20} {jobs} jobs of 3 steps  {took:.1f} s  {took / jobs:.2f} s/job  "
              f"done {done}/{jobs}  not started exactly once: {wrong}")
    print(f"slurm s/job / local s/job  {on_slurm[0] / local[0]:.1f}")


def bench_gap(b: Bench) -> None:
    first = b.submit()
    second = b.submit()
    proc = b.daemon("--exit-when-idle", "--poll", "0.5")
    claimed = b.wait_for(lambda: b.path("running", first).exists())
    step1 = b.wait_for(lambda: b.first_step_logged(first))
    ended = b.wait_for(lambda: b.path("done", first).exists())
    step2 = b.wait_for(lambda: b.first_step_logged(second))
    proc.wait(timeout=300)
    gap1, gap2 = step1 - claimed, step2 - ended
    print(f"job-to-job gap: first job {gap1:.2f} s (claim -> first step, cold)  "
          f"second job {gap2:.2f} s (previous end -> first step, warm)  "
          f"ratio {gap2 / gap1:.3f}  target < 0.25")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--daemons", type=int, default=4)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--slurm-jobs", type=int, default=10)
    parser.add_argument("--only", default="gap,claim,idle,backlog,drain,slurm")
    args = parser.parse_args()
    wanted = args.only.split(",")
    for name in wanted:
        with tempfile.TemporaryDirectory() as tmp:
            b = Bench(Path(tmp))
            if name == "gap":
                bench_gap(b)
            elif name == "claim":
                bench_claim(b, args.poll, args.rounds)
            elif name == "idle":
                bench_idle(b, args.idle)
            elif name == "backlog":
                bench_backlog(b, args.idle, args.backlog)
            elif name == "drain":
                bench_drain(b, args.jobs, args.daemons)
            elif name == "slurm":
                bench_slurm(b, args.slurm_jobs)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
