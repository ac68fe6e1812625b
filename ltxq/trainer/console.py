"""`ltxq train`: one run in the foreground with a tqdm bar; Ctrl-C stops at the next step."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from ltxq.config import TrainingConfig
from ltxq.run import TrainResult


class ConsoleRun:
    """A `Run` that draws a progress bar and prints events above it."""

    def __init__(self, output_dir: Path, device: str | None, total: int) -> None:
        self.job_id = None
        self.job_key = None  # `ltxq train` is no queue job: its folder is not checked
        self.output_dir = Path(output_dir)
        self.device = device
        self.stop_requested = threading.Event()
        self.total = total
        # Made at the first step, so model loading and preprocessing do not skew its rate
        # and a resumed run starts at its checkpoint's step.
        self.bar: tqdm | None = None

    def should_stop(self) -> bool:
        """Return True once Ctrl-C was pressed."""
        return self.stop_requested.is_set()

    def progress(self, step: int, total: int, loss: float, lr: float,
                 seconds_per_step: float) -> None:
        """Move the bar to STEP and show loss and learning rate."""
        if self.bar is None:
            self.bar = tqdm(total=total, initial=step - 1, unit="step", desc="train",
                            dynamic_ncols=True, file=sys.stderr)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)

    def log(self, message: str) -> None:
        """Print MESSAGE above the bar."""
        tqdm.write(message, file=sys.stderr)

    def checkpoint_saved(self, path: Path, step: int) -> None:
        """Print where the checkpoint went."""
        tqdm.write(f"checkpoint step {step}: {path}", file=sys.stderr)

    def sample_written(self, path: Path, step: int) -> None:
        """Print where the video went."""
        tqdm.write(f"sample step {step}: {path}", file=sys.stderr)

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()


def run_foreground(config: TrainingConfig, output_dir: Path,
                   device: str | None = None) -> TrainResult:
    """Train CONFIG into OUTPUT_DIR with a tqdm bar, resuming its newest checkpoint.

    The first Ctrl-C asks for a stop at the next step (a checkpoint is saved, then the
    result says STOPPED); a second one interrupts at once.
    """
    from ltxq.trainer import train

    run = ConsoleRun(output_dir, device, config.optimization.steps)
    previous = None

    def on_sigint(signum: int, frame: object) -> None:
        # Only set a flag here: the loop saves the checkpoint at its next step.
        if run.stop_requested.is_set():
            raise KeyboardInterrupt
        run.stop_requested.set()

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGINT, on_sigint)
    # Library warnings reach run.log (train routes them), so they print above the bar too.
    try:
        result = train(config, run)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        run.close()
    return result
