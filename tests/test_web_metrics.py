"""The trainer's machine record (metrics.jsonl, samples.jsonl) on the tiny model: one line per
optimizer step with every field, the validation videos listed, and a stopped-then-resumed run
(and a crash that repeats steps after the last checkpoint) records no step twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_trainer_support import RecordingRun, fit_clean, make_config, random_samples

from ltxq.metrics import METRICS, SAMPLES
from ltxq.run import Outcome
from ltxq.trainer.models import Components, build_tiny_random


@pytest.fixture(scope="module")
def tiny() -> Components:
    return build_tiny_random()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_and_samples_across_a_stop_and_a_crash(tmp_path: Path, tiny: Components):
    config = make_config(optimization={"steps": 8},
                         validation={"prompts": ["a red square", "a blue circle"],
                                     "interval": 4, "inference_steps": 2},
                         checkpoints={"interval": 4})
    samples = random_samples()
    out = tmp_path / "run"
    first = fit_clean(config, RecordingRun(out, stop_at=6), tiny, samples)
    assert first.outcome is Outcome.STOPPED
    # The stop saved step 6; as if a crash had followed step 7 (recorded, never checkpointed).
    with open(out / METRICS, "a") as f:
        f.write(json.dumps({"step": 7, "time": 0, "loss": 9.0, "lr": 0, "grad_norm": None,
                            "s_per_step": 0, "samples_seen": 0}) + "\n")
    second = fit_clean(config, RecordingRun(out), tiny, samples)
    assert second.outcome is Outcome.COMPLETED
    rows = lines(out / METRICS)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert set(rows[0]) == {"step", "time", "loss", "lr", "grad_norm", "s_per_step",
                            "samples_seen"}
    assert rows[0]["samples_seen"] == 2 * 2  # batch 2 x accumulation 2, one rank
    assert all(isinstance(r["grad_norm"], float) for r in rows if r["step"] != 7)
    sampled = lines(out / SAMPLES)
    assert [(s["step"], s["prompt_index"]) for s in sampled] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert sampled[1]["prompt"] == "a blue circle" and sampled[1]["seed"] == 42
    assert all((out / s["path"]).is_file() for s in sampled)
