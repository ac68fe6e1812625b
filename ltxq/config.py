"""The training config model, no torch: what the rest of ltxq imports.

Every field carries its documentation in `metadata["doc"]`; `parse_config` turns a TOML
dict into a `TrainingConfig`, refusing unknown keys, wrong types and out-of-range values
with a `ConfigError` that names the key (`optimization.steps`). The queue validates with it
on submit, the trainer reads it. It lives in ltxq.configs, by concern; this module is its
one import path, except for what modules every command loads take without the sections'
dataclasses: the constants in ltxq.configs, and job.py's checks of the [job] table.
"""

from __future__ import annotations

from ltxq.configs import DEFAULT_CAPTION_MODEL, DEFAULT_CAPTION_PROMPT, KINDS
from ltxq.configs.kinds import (
    KIND_SECTIONS,
    CaptionConfig,
    PreprocessConfig,
    parse_kind_sections,
    preprocess_keys,
    preprocess_training_config,
)
from ltxq.configs.parse import (
    config_to_dict,
    looks_like_local_path,
    parse_config,
    resolve_paths,
)
from ltxq.configs.sections import (
    DEFAULT_NEGATIVE_PROMPT,
    SECTIONS,
    SINGLE_FILE_SUFFIXES,
    TARGET_MODULES,
    TINY_RANDOM,
    CheckpointConfig,
    DataConfig,
    LoraConfig,
    ModelConfig,
    OptimizationConfig,
    OutputConfig,
    Resolution,
    ResourcesConfig,
    TrainingConfig,
    ValidationConfig,
    describe_fields,
)
from ltxq.errors import ConfigError

__all__ = [
    "DEFAULT_CAPTION_MODEL",
    "DEFAULT_CAPTION_PROMPT",
    "DEFAULT_NEGATIVE_PROMPT",
    "KINDS",
    "KIND_SECTIONS",
    "SECTIONS",
    "SINGLE_FILE_SUFFIXES",
    "TARGET_MODULES",
    "TINY_RANDOM",
    "CaptionConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LoraConfig",
    "ModelConfig",
    "OptimizationConfig",
    "OutputConfig",
    "PreprocessConfig",
    "Resolution",
    "ResourcesConfig",
    "TrainingConfig",
    "ValidationConfig",
    "config_to_dict",
    "describe_fields",
    "looks_like_local_path",
    "parse_config",
    "parse_kind_sections",
    "preprocess_keys",
    "preprocess_training_config",
    "resolve_paths",
]
