"""The training config model and the job file format: validation at the boundary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ltxq.config import Resolution, describe_fields, parse_config
from ltxq.errors import ConfigError
from ltxq.job import dump_job, parse_job

MINIMAL = {"data": {"dataset": "clips", "resolution": "64x64x9"},
           "optimization": {"steps": 20},
           "validation": {"interval": 10, "video": "64x64x9"},
           "checkpoints": {"interval": 5}}


def _with(section: str, **values: object) -> dict:
    raw = {k: dict(v) for k, v in MINIMAL.items()}
    raw.setdefault(section, {}).update(values)
    return raw


def test_defaults_filled_and_paths_resolved(tmp_path: Path) -> None:
    config = parse_config(MINIMAL, base_dir=tmp_path)
    assert config.data.dataset == str(tmp_path / "clips")
    assert config.output.root == str(tmp_path / "outputs")
    assert config.lora.effective_alpha == config.lora.rank
    assert config.optimization.scheduler == "linear"
    assert config.model.source == "Lightricks/LTX-Video"
    assert config.data.bucket == Resolution(64, 64, 9)


@pytest.mark.parametrize(("raw", "key", "words"), [
    (_with("lora", rnk=4), "lora.rnk", "unknown key"),
    ({**MINIMAL, "lorra": {}}, "lorra", "unknown section"),
    (_with("optimization", steps="ten"), "optimization.steps", "integer"),
    (_with("optimization", steps=0), "optimization.steps", ">= 1"),
    (_with("optimization", learning_rate=True), "optimization.learning_rate", "number"),
    (_with("optimization", scheduler="step"), "optimization.scheduler", "one of"),
    (_with("data", resolution="65x64x9"), "data.resolution", "multiples of 32"),
    (_with("data", resolution="64x64x10"), "data.resolution", "8k+1"),
    (_with("data", resolution="64by64"), "data.resolution", "WIDTHxHEIGHTxFRAMES"),
    (_with("validation", interval=50), "validation.interval", "optimization.steps"),
    (_with("checkpoints", interval=21), "checkpoints.interval", "optimization.steps"),
    (_with("validation", prompts="one"), "validation.prompts", "list"),
    (_with("lora", target_modules=[]), "lora.target_modules", "at least one"),
    ({"model": {"source": "tiny-random"}}, "data.dataset", "required"),
    # nan passes every range comparison, so it needs its own refusal
    (_with("optimization", learning_rate=float("nan")), "optimization.learning_rate", "finite"),
    (_with("lora", alpha=float("nan")), "lora.alpha", "finite"),
    (_with("data", frame_rate=float("inf")), "data.frame_rate", "finite"),
])
def test_bad_values_name_the_key(raw: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == key
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_unset_intervals_fit_a_short_run_and_set_ones_are_checked() -> None:
    short = {"data": {"dataset": "clips"}, "optimization": {"steps": 7}}
    config = parse_config(short)
    assert config.validation.interval == 7 and config.checkpoints.interval == 7
    long = parse_config({**short, "optimization": {"steps": 1000}})
    assert long.validation.interval == 100 and long.checkpoints.interval == 250
    # Only the unset one is capped; a set one is kept, or refused naming file and key.
    mixed = parse_config({**short, "checkpoints": {"interval": 3}})
    assert mixed.checkpoints.interval == 3 and mixed.validation.interval == 7
    with pytest.raises(ConfigError) as info:
        parse_job("[data]\ndataset = 'clips'\n[optimization]\nsteps = 7\n"
                  "[checkpoints]\ninterval = 10\n", file="short.toml")
    assert str(info.value) == ("short.toml: checkpoints.interval: must be <= "
                               "optimization.steps (7), got 10")


def test_a_capped_interval_is_not_written_into_the_job() -> None:
    job = parse_job("[data]\ndataset = '/clips'\n[optimization]\nsteps = 7\n")
    assert "interval" not in job.raw.get("validation", {})
    assert "interval" not in job.raw.get("checkpoints", {})
    # So raising the steps later (ltxq edit) brings the defaults back.
    longer = job.with_raw({**job.raw, "optimization": {"steps": 500}})
    assert longer.config.validation.interval == 100
    assert longer.config.checkpoints.interval == 250


def test_missing_dataset_folder_refused_when_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.dataset: dataset folder not found"):
        parse_config(MINIMAL, base_dir=tmp_path, require_dataset_exists=True)
    (tmp_path / "clips").mkdir()
    parse_config(MINIMAL, base_dir=tmp_path, require_dataset_exists=True)


def test_missing_local_model_folder_refused_when_required(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    raw = {**MINIMAL, "model": {"source": "./models/ltx"}}
    with pytest.raises(ConfigError, match=r"model\.source: model folder not found: .*models/ltx"):
        parse_config(raw, base_dir=tmp_path, require_dataset_exists=True)
    (tmp_path / "models" / "ltx").mkdir(parents=True)
    assert parse_config(raw, base_dir=tmp_path, require_dataset_exists=True).model.source == \
        str(tmp_path / "models" / "ltx")
    # A hub id is not checked here: no network at submit time.
    parse_config({**MINIMAL, "model": {"source": "Lightricks/LTX-Video"}}, base_dir=tmp_path,
                 require_dataset_exists=True)


def test_every_field_documented() -> None:
    rows = describe_fields()
    assert len(rows) > 30
    assert all(doc for _, _, _, doc in rows)


def test_job_file_round_trip(tmp_path: Path) -> None:
    text = """
[job]
name = "cake"
priority = 3
[data]
dataset = "clips"
resolution = "64x64x9"
[optimization]
steps = 20
[validation]
interval = 10
video = "64x64x9"
[checkpoints]
interval = 5
"""
    job = parse_job(text, file="cake.toml", base_dir=tmp_path)
    assert job.meta.name == "cake" and job.meta.priority == 3 and job.meta.max_attempts == 3
    assert job.raw["data"]["dataset"] == str(tmp_path / "clips")
    job = job.with_meta(id=7)
    again = parse_job(dump_job(job), base_dir=Path("/elsewhere"))
    assert again.meta == job.meta
    assert again.config == job.config
    assert again.output_dir() == tmp_path / "outputs" / "lora_r32_job7"
    assert again.fingerprint() == job.fingerprint()
    assert job.with_meta(priority=9).fingerprint() == job.fingerprint()


@pytest.mark.parametrize(("text", "words"), [
    ("[job]\nname = 3\n[data]\ndataset='x'", "f.toml: job.name: must be a string"),
    ("[job]\nnmae = 'x'\n[data]\ndataset='x'", "f.toml: job.nmae: unknown key"),
    ("[job]\nmax_attempts = 0\n[data]\ndataset='x'", "f.toml: job.max_attempts: must be >= 1"),
    ("[data\ndataset='x'", "f.toml: invalid TOML"),
])
def test_bad_job_files(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_job(text, file="f.toml")
    assert str(info.value).startswith(words)


def test_config_modules_import_without_torch() -> None:
    code = "import ltxq, ltxq.config, ltxq.job, ltxq.run, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_reference_is_current() -> None:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "config_reference.py")],
                         capture_output=True, text=True, check=True)
    assert out.stdout == (root / "docs" / "CONFIG.md").read_text(), \
        "docs/CONFIG.md is stale: run scripts/config_reference.py > docs/CONFIG.md"
