"""The training sections from a TOML dict to a TrainingConfig and back, and the rules across
fields (buckets, intervals within the steps, paths made absolute, files that must exist).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ltxq.configs.fields import _parse_section
from ltxq.configs.sections import (
    SECTIONS,
    SINGLE_FILE_SUFFIXES,
    TINY_RANDOM,
    Resolution,
    TrainingConfig,
)
from ltxq.errors import ConfigError


def parse_config(raw: dict[str, Any], *, base_dir: Path | None = None,
                 require_dataset_exists: bool = False) -> TrainingConfig:
    """Validate the training sections of RAW (a TOML dict without [job]).

    Relative `data.dataset`, `output.root` and local `model.source` paths are resolved
    against BASE_DIR when given. Raises ConfigError naming the first bad key.
    """
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section (known: {', '.join(SECTIONS)})", key=unknown[0])
    sections = {}
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError("must be a table", key=name)
        sections[name] = _parse_section(cls, table, name)
    config = _fit_default_intervals(TrainingConfig(**sections), raw)
    if base_dir is not None:
        config = resolve_paths(config, base_dir)
    _check_cross_fields(config, require_dataset_exists)
    return config


def resolve_paths(config: TrainingConfig, base_dir: Path) -> TrainingConfig:
    """Return CONFIG with relative dataset, output root and local model paths made absolute."""
    def absolute(p: str) -> str:
        return str((base_dir / Path(p).expanduser()).resolve()) if p else p

    data = dataclasses.replace(config.data, dataset=absolute(config.data.dataset))
    output = dataclasses.replace(config.output, root=absolute(config.output.root))
    model = config.model
    if looks_like_local_path(model.source, base_dir):
        model = dataclasses.replace(model, source=absolute(model.source))
    if model.base is not None and looks_like_local_path(model.base, base_dir):
        model = dataclasses.replace(model, base=absolute(model.base))
    validation = dataclasses.replace(config.validation,
                                     images=[absolute(p) for p in config.validation.images])
    return dataclasses.replace(config, data=data, output=output, model=model,
                               validation=validation)


def looks_like_local_path(source: str, base_dir: Path | None = None) -> bool:
    """Tell a local diffusers folder from a hub id ("org/name") or the built-in model."""
    if source == TINY_RANDOM:
        return False
    if source.startswith(("/", ".", "~")):
        return True
    return base_dir is not None and (base_dir / source).exists()


def config_to_dict(config: TrainingConfig) -> dict[str, Any]:
    """Return CONFIG as a TOML-ready dict (None values left out)."""
    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v is not None}
        return obj
    return clean(dataclasses.asdict(config))


# Intervals whose defaults (100, 250) suit a real run but exceed a short one's steps.
_STEP_INTERVALS = (("validation", "interval"), ("checkpoints", "interval"))


def _fit_default_intervals(config: TrainingConfig, raw: dict[str, Any]) -> TrainingConfig:
    """Cap the intervals RAW leaves unset at optimization.steps (the same as "at the end").

    A short run (`steps = 7`) should not be refused for a default it never chose; an
    interval the user does set above the steps stays an error (`_check_cross_fields`).
    """
    steps = config.optimization.steps
    for section, name in _STEP_INTERVALS:
        table = getattr(config, section)
        if name not in raw.get(section, {}) and getattr(table, name) > steps:
            config = dataclasses.replace(
                config, **{section: dataclasses.replace(table, **{name: steps})})
    return config


def _check_cross_fields(config: TrainingConfig, require_dataset_exists: bool) -> None:
    resolutions = config.data.resolution
    for key, text in ([("data.resolution", t) for t in
                       ([resolutions] if isinstance(resolutions, str) else resolutions)]
                      + [("validation.video", config.validation.video)]):
        try:
            Resolution.parse(text)
        except ValueError as e:
            raise ConfigError(str(e), key=key) from None
    if isinstance(resolutions, list):
        if not resolutions:
            raise ConfigError("must name at least one bucket", key="data.resolution")
        if len(set(resolutions)) < len(resolutions):
            raise ConfigError("names a bucket twice", key="data.resolution")
    steps = config.optimization.steps
    for section, name in _STEP_INTERVALS:
        key, interval = f"{section}.{name}", getattr(getattr(config, section), name)
        if interval > steps:
            raise ConfigError(f"must be <= optimization.steps ({steps}), got {interval}", key=key)
    if config.optimization.warmup_steps >= steps and config.optimization.warmup_steps:
        raise ConfigError(f"must be < optimization.steps ({steps})",
                          key="optimization.warmup_steps")
    if not config.lora.target_modules:
        raise ConfigError("must name at least one module", key="lora.target_modules")
    images, prompts = config.validation.images, config.validation.prompts
    if images and len(images) != len(prompts):
        raise ConfigError(f"must name one image per prompt ({len(prompts)}), got {len(images)}",
                          key="validation.images")
    if config.model.base is not None and not config.model.source.endswith(SINGLE_FILE_SUFFIXES):
        raise ConfigError("is only for a single-file model.source (.safetensors)",
                          key="model.base")
    if require_dataset_exists:
        dataset = Path(config.data.dataset)
        if not dataset.is_dir():
            raise ConfigError(f"dataset folder not found: {dataset}", key="data.dataset")
        source = config.model.source
        if source.endswith(SINGLE_FILE_SUFFIXES):
            if not Path(source).expanduser().is_file():
                raise ConfigError(f"model file not found: {source}", key="model.source")
        elif looks_like_local_path(source) and not Path(source).expanduser().is_dir():
            raise ConfigError(f"model folder not found: {source}", key="model.source")
        for image in images:
            if not Path(image).is_file():
                raise ConfigError(f"image not found: {image}", key="validation.images")
