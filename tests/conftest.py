"""Shared helpers for the queue tests: configs, a CLI runner in a subprocess, real daemons."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE = "tests.fake_trainer:train"


def write_config(path: Path, dataset: str | Path = "ds", steps: int = 5, interval: int = 0,
                 extra: str = "") -> Path:
    """Write a small valid job config (tiny-random model, 64x64x9) to PATH."""
    path.write_text(f"""{extra}
[model]
source = "tiny-random"
[data]
dataset = "{dataset}"
resolution = "64x64x9"
[lora]
rank = 4
[optimization]
steps = {steps}
[validation]
interval = 0
video = "64x64x9"
[checkpoints]
interval = {interval}
""")
    return path


def new_spool(root: Path, settle_seconds: float = 0) -> Any:
    """Make ROOT/spool, with a dataset ROOT/ds and a valid config ROOT/job.toml beside it."""
    from ltxq import Spool

    (root / "ds").mkdir()
    write_config(root / "job.toml", steps=5)
    spool = Spool(root / "spool", settle_seconds=settle_seconds)
    spool.create()
    return spool


def node_pid(spool: Path, job_id: int) -> int | None:
    """Return the pid of the Slurm node process running job JOB_ID on this machine, if any."""
    needle = f"ltxq.executors.slurm.node --spool {spool} --job {job_id}"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmd:
            return int(pid)
    return None


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll PREDICATE until it returns something truthy (a deadline, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Env:
    """A work folder with a spool, a dataset `ds/`, and ways to run `ltxq` and daemons in it."""

    def __init__(self, root: Path):
        self.root = root
        self.spool = root / "spool"
        self.dataset = root / "ds"
        self.dataset.mkdir()
        self.outputs = root / "outputs"
        self.env = dict(os.environ, LTXQ_SPOOL=str(self.spool),
                        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.env.pop("LTXQ_TRAINER", None)
        self.daemons: list[subprocess.Popen] = []

    def config(self, name: str = "job.toml", **kw: Any) -> Path:
        return write_config(self.root / name, **kw)

    def failing_config(self, name: str = "bad.toml", error: str = "nope", steps: int = 2) -> Path:
        """Write a config whose dataset makes the fake trainer fail with ERROR."""
        bad = self.root / "bad"
        bad.mkdir(exist_ok=True)
        (bad / "FAIL").write_text(error)
        return self.config(name, dataset="bad", steps=steps)

    def modules_loaded(self, args: list[str], modules: tuple[str, ...]) -> list[str]:
        """Run `ltxq ARGS` in a fresh interpreter; return which of MODULES it imported."""
        code = ("import json, sys\n"
                "from ltxq.cli import cli\n"
                "try:\n"
                "    cli.main(sys.argv[2:], prog_name='ltxq', standalone_mode=False)\n"
                "except SystemExit:\n"
                "    pass\n"
                "print(json.dumps([m for m in json.loads(sys.argv[1]) if m in sys.modules]))\n")
        p = subprocess.run([sys.executable, "-c", code, json.dumps(modules), *args],
                           cwd=self.root, env=self.env, capture_output=True, text=True,
                           check=False, timeout=120)
        if p.returncode != 0 or not p.stdout.strip():
            raise AssertionError(f"ltxq {' '.join(args)} -> {p.returncode}\n{p.stderr}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    def run(self, *args: str, check: bool = True, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `ltxq ARGS` in a subprocess; check=True expects exit 0."""
        p = subprocess.run([sys.executable, "-m", "ltxq", *args], cwd=self.root,
                           env=env or self.env, capture_output=True, text=True, input=input,
                           timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"ltxq {' '.join(args)} -> {p.returncode}\n{p.stdout}{p.stderr}")
        return p

    def submit(self, *args: str) -> int:
        return int(self.run("submit", *args).stdout.strip())

    def status(self, *args: str) -> list[dict[str, Any]]:
        return json.loads(self.run("status", "--json", *args).stdout)

    def job(self, job_id: int) -> dict[str, Any]:
        return self.status(str(job_id))[0]

    def state(self, job_id: int) -> str:
        return self.job(job_id)["state"]

    def wait_state(self, job_id: int, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        return wait_for(lambda: (lambda j: j if j["state"] in states else None)(self.job(job_id)),
                        timeout, f"job {job_id} to be {'/'.join(states)}")

    def daemon(self, *args: str) -> subprocess.Popen:
        """Start a real daemon process with the fake trainer."""
        p = subprocess.Popen([sys.executable, "-m", "ltxq", "daemon", "--trainer", FAKE,
                              "--poll", "0.1", *args], cwd=self.root, env=self.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.daemons.append(p)
        return p

    def ran(self) -> list[tuple[int, int]]:
        """Return (job id, first step) for every start the fake trainer recorded."""
        path = self.outputs / "ran.log"
        if not path.exists():
            return []
        return [(int(a), int(b)) for a, b, *_ in
                (line.split() for line in path.read_text().splitlines())]

    def stop_all(self) -> None:
        for p in self.daemons:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def tiny() -> Any:
    """The tiny-random LTX-Video components, built once per test module (torch loads here)."""
    from ltxq.trainer.models import build_tiny_random

    return build_tiny_random()


def render_latents(components: Any) -> Any:
    """Render 9 frames at 32x32 in 2 steps with a fixed seed; return the latents (numpy)."""
    import torch

    from ltxq.trainer.models import make_pipeline

    pipe = make_pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a red square moving right", negative_prompt="", num_frames=9,
                height=32, width=32, num_inference_steps=2, guidance_scale=3.0,
                max_sequence_length=32, generator=torch.Generator().manual_seed(0),
                output_type="latent").frames.float().numpy()


@pytest.fixture
def env(tmp_path: Path):
    e = Env(tmp_path)
    e.outputs.mkdir()
    yield e
    e.stop_all()
