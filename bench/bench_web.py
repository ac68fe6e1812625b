"""Benchmark the dashboard: the queue page over 10,000 jobs, and an idle server's CPU.

    .venv/bin/python bench/bench_web.py [--jobs 10000] [--idle-seconds 30] [--repeat 5]

Starts `ltxq web` as a real process on a free port against a spool filled with JOBS jobs
(mostly done, some pending, failed and cancelled, one running), then prints:
- the time of GET / (the folded queue page, as `ltxq status` folds) on first load (cold status
  caches) and warm (median of REPEAT), of GET /?state=all (every row), and of GET /api/jobs;
- the server's CPU use while idle with three pages open (three /events streams), in percent
  of one core, read from /proc/PID/stat over IDLE_SECONDS.
Targets (issue 13): queue page < 1 s with 10,000 jobs; idle with three pages < 2% of a core.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from ltxq.job import job_from_dict  # noqa: E402
from ltxq.spool import Spool, State  # noqa: E402
from ltxq.spool.claimindex import ClaimIndex  # noqa: E402

CONFIG = """
[model]
source = "tiny-random"
[data]
dataset = "{dataset}"
resolution = "64x64x9"
[optimization]
steps = 100
"""


def fill(root: Path, count: int) -> Path:
    """Make ROOT/spool with COUNT jobs in every state (most finished, as after months)."""
    dataset = root / "ds"
    dataset.mkdir(parents=True, exist_ok=True)
    spool = Spool(root / "spool")
    spool.create()
    base = job_from_dict(tomllib.loads(CONFIG.format(dataset=dataset)))
    index = ClaimIndex(spool)
    old = time.time() - 3600
    t0 = datetime.now(UTC) - timedelta(days=30)
    for job_id in range(1, count + 1):
        share = job_id / count
        state = (State.DONE if share < 0.70 else State.FAILED if share < 0.72 else
                 State.CANCELLED if share < 0.74 else State.PENDING)
        if job_id == count:
            state = State.RUNNING
        when = t0 + timedelta(minutes=job_id)
        meta = {"id": job_id, "key": f"{job_id:032x}", "name": f"bench-{job_id}",
                "priority": job_id % 3, "submitted_at": when,
                "output_dir": str(root / "outputs" / f"lora_r32_job{job_id}")}
        if state is not State.PENDING:
            meta["started_at"] = when
        if state in (State.DONE, State.FAILED, State.CANCELLED):
            meta["finished_at"] = when + timedelta(minutes=1)
            meta["step"] = 100 if state is State.DONE else 40
        if state is State.FAILED:
            meta["error"] = "CUDA out of memory"
        job = base.with_meta(**meta)
        path = spool.job_path(state, job_id)
        spool.write_job(path, job)
        os.utime(path, (old, old))
        if state is State.PENDING:
            index.record(path, job)
    (spool.path / "locks" / "last-id").write_text(f"{count}\n")
    return spool.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, url: str) -> tuple[float, int, int]:
    """GET URL; return (seconds, status, bytes)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", url)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return time.perf_counter() - start, r.status, len(body)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_stream(port: int, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/events")
        r = conn.getresponse()
        while not stop.is_set():
            try:
                if not r.fp.readline():
                    break
            except (TimeoutError, OSError):
                break
        conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        spool = fill(root, args.jobs)
        print(f"spool of {args.jobs:,} jobs written in {time.perf_counter() - t:.1f} s")
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        server = subprocess.Popen([sys.executable, "-m", "ltxq", "--spool", str(spool), "web",
                                   "--port", str(port), "--datasets", str(root)], env=env,
                                  cwd=root, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.1)
            for url in ("/", "/?state=done", "/?state=all&page=20", "/api/jobs"):
                first, status, size = get(port, url)
                warm = statistics.median(get(port, url)[0] for _ in range(args.repeat))
                target = "  (target < 1 s)" if url == "/" else ""
                print(f"GET {url:<20} {status}  {size / 1024:8.0f} KiB  first {first:6.3f} s"
                      f"  warm median {warm:6.3f} s{target}")
            stop = threading.Event()
            streams = [open_stream(port, stop) for _ in range(3)]
            time.sleep(2)
            before, t0 = cpu_seconds(server.pid), time.monotonic()
            time.sleep(args.idle_seconds)
            used = cpu_seconds(server.pid) - before
            share = 100 * used / (time.monotonic() - t0)
            print(f"idle with 3 open pages (/events streams) for {args.idle_seconds:.0f} s: "
                  f"{used:.2f} CPU s = {share:.2f}% of a core  (target < 2%)")
            stop.set()
            del streams
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
