"""Caption and preprocess jobs (issue 12): each kind has its own section; `train` is the default.

A [preprocess] section is the [model] and [data] keys, flat: it is parsed as those training
sections are, and its errors name the keys as the user wrote them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltxq.configs import DEFAULT_CAPTION_MODEL, DEFAULT_CAPTION_PROMPT
from ltxq.configs.fields import _check_str, _doc, _parse_section
from ltxq.configs.parse import looks_like_local_path, parse_config
from ltxq.configs.sections import DataConfig, ModelConfig, ResourcesConfig, TrainingConfig
from ltxq.errors import ConfigError


@dataclass(frozen=True)
class CaptionConfig:
    """A caption job's [caption] section (also what `ltxq caption` runs)."""

    dataset: str = _doc("Folder of videos/images to caption; relative to the job file.")
    model: str = _doc("Vision-language model: hub id, local folder, or 'tiny-random'.",
                      DEFAULT_CAPTION_MODEL)
    revision: str | None = _doc("Hub revision of a hub id.", None)
    prompt: str = _doc("Instruction given with every clip.", DEFAULT_CAPTION_PROMPT)
    override: bool = _doc("Caption clips that already have a caption too (the old one is kept "
                          "in the file or backed up).", False)
    format: str = _doc("Where captions go: jsonl (captions.jsonl) or txt (clip.txt sidecars).",
                       "jsonl", choices=("jsonl", "txt"))
    max_new_tokens: int = _doc("Most tokens generated per caption.", 200, min=1, max=4096)
    fps: float = _doc("Frames per second sampled from a video.", 3.0, min=0.1, max=60.0)
    max_frames: int = _doc("Most frames given to the model per video.", 64, min=2, max=768)


@dataclass(frozen=True)
class PreprocessConfig:
    """A preprocess job's [preprocess] section: the dataset, and the [model] and [data] keys that
    shape its cache, flat (`model` is model.source, `resolution` data.resolution, ...): what a
    training job on that dataset with those keys will find in the cache."""

    dataset: str
    training: TrainingConfig   # the training view whose cache the job fills

    @property
    def model(self) -> str:
        return self.training.model.source

    @property
    def revision(self) -> str | None:
        return self.training.model.revision


def preprocess_keys() -> dict[str, tuple[str, str]]:
    """Map each [preprocess] key to its training key: model -> (model, source), ..."""
    keys = {"model": ("model", "source")}
    keys.update({f.name: ("model", f.name) for f in dataclasses.fields(ModelConfig)
                 if f.name != "source"})
    keys.update({f.name: ("data", f.name) for f in dataclasses.fields(DataConfig)
                 if f.name != "dataset"})
    return keys


def _parse_preprocess(table: dict[str, Any], base_dir: Path | None,
                      require_dataset_exists: bool) -> PreprocessConfig:
    keys = preprocess_keys()
    doc: dict[str, dict[str, Any]] = {"model": {}, "data": {}}
    for key, value in table.items():
        if key == "dataset":
            doc["data"]["dataset"] = _check_str(value, "preprocess.dataset")
        elif key in keys:
            section, name = keys[key]
            doc[section][name] = value
        else:
            raise ConfigError(f"unknown key (known: dataset, {', '.join(keys)})",
                              key=f"preprocess.{key}")
    if not doc["data"].get("dataset"):
        raise ConfigError("is required (the dataset folder)", key="preprocess.dataset")
    back = {f"{section}.{name}": f"preprocess.{key}" for key, (section, name) in keys.items()}
    back["data.dataset"] = "preprocess.dataset"
    try:
        training = parse_config(doc, base_dir=base_dir,
                                require_dataset_exists=require_dataset_exists)
    except ConfigError as e:  # name the key as the user wrote it
        raise ConfigError(e.message, key=back.get(e.key or "", e.key)) from None
    return PreprocessConfig(dataset=training.data.dataset, training=training)


# What a job of each non-train kind may hold besides [job]: its own section, and [resources]
# (Slurm, processes) which every kind shares.
KIND_SECTIONS: dict[str, dict[str, type]] = {
    "caption": {"caption": CaptionConfig, "resources": ResourcesConfig},
    "preprocess": {"preprocess": PreprocessConfig, "resources": ResourcesConfig},
}


def parse_kind_sections(kind: str, raw: dict[str, Any], *, base_dir: Path | None = None,
                        require_dataset_exists: bool = False
                        ) -> tuple[CaptionConfig | PreprocessConfig, ResourcesConfig]:
    """Validate a caption or preprocess job's sections: (its own section, [resources])."""
    allowed = KIND_SECTIONS[kind]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown section for a {kind} job (known: {', '.join(allowed)})",
                          key=unknown[0])
    if kind not in raw:
        raise ConfigError(f"is required for a {kind} job (at least its dataset)", key=kind)
    for name in allowed:
        if not isinstance(raw.get(name, {}), dict):
            raise ConfigError("must be a table", key=name)
    resources = _parse_section(ResourcesConfig, raw.get("resources", {}), "resources")
    if kind == "preprocess":
        return _parse_preprocess(raw[kind], base_dir, require_dataset_exists), resources
    task = _parse_section(CaptionConfig, raw[kind], kind)
    if not task.dataset:
        raise ConfigError("is required (the dataset folder)", key=f"{kind}.dataset")
    if base_dir is not None:
        changes = {"dataset": str((base_dir / Path(task.dataset).expanduser()).resolve())}
        if looks_like_local_path(task.model, base_dir):
            changes["model"] = str((base_dir / Path(task.model).expanduser()).resolve())
        task = dataclasses.replace(task, **changes)
    if require_dataset_exists:
        if not Path(task.dataset).is_dir():
            raise ConfigError(f"dataset folder not found: {task.dataset}", key=f"{kind}.dataset")
        if looks_like_local_path(task.model) and not Path(task.model).expanduser().is_dir():
            raise ConfigError(f"model folder not found: {task.model}", key=f"{kind}.model")
    return task, resources


def preprocess_training_config(task: PreprocessConfig,
                               resources: ResourcesConfig | None = None) -> TrainingConfig:
    """Return the training config whose cache a [preprocess] section fills."""
    return dataclasses.replace(task.training, resources=resources or ResourcesConfig())
