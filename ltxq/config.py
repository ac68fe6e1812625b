"""The training config model: one frozen dataclass per TOML section, no torch.

Every field carries its documentation in `metadata["doc"]`; `parse_config` turns a TOML
dict into a `TrainingConfig`, refusing unknown keys, wrong types and out-of-range values
with a `ConfigError` that names the key (`optimization.steps`). The queue validates with it
on submit, the trainer reads it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltxq.errors import ConfigError

TINY_RANDOM = "tiny-random"
DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"
TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
SINGLE_FILE_SUFFIXES = (".safetensors", ".sft")  # a model.source that is one checkpoint file
_RESOLUTION = re.compile(r"\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*")


# Values in error messages: bounded, so a hostile value (a megabyte string, a list nested
# thousands deep) still makes one short line, and never a RecursionError.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 3, 6, 4


def _show(value: Any) -> str:
    """Return a short repr of VALUE for an error message."""
    return _REPR.repr(value)


def _doc(text: str, default: Any = dataclasses.MISSING, **check: Any) -> Any:
    """Declare a field with its documentation and range checks (min, max, choices)."""
    meta = {"doc": text, **check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Resolution:
    """A resolution bucket, WIDTHxHEIGHTxFRAMES."""

    width: int
    height: int
    frames: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @classmethod
    def parse(cls, text: str) -> Resolution:
        """Parse "768x448x89"; sides multiples of 32, frames 8k+1 (1 for images)."""
        m = _RESOLUTION.fullmatch(text)
        if not m:
            raise ValueError(f"expected WIDTHxHEIGHTxFRAMES such as 768x448x89, "
                             f"got {_show(text)}")
        w, h, f = (int(g) for g in m.groups())
        if w <= 0 or h <= 0 or w % 32 or h % 32:
            raise ValueError(f"width and height must be positive multiples of 32, got {w}x{h}")
        if f < 1 or (f - 1) % 8:
            raise ValueError(f"frames must be 8k+1 (1, 9, 17, 25, ...), got {f}")
        return cls(w, h, f)


@dataclass(frozen=True)
class ModelConfig:
    source: str = _doc("Hub id, local diffusers folder, a single-file checkpoint (.safetensors "
                       "as Lightricks publishes them), or the built-in 'tiny-random'.",
                       "Lightricks/LTX-Video")
    revision: str | None = _doc("Hub revision (branch, tag or commit) of a hub id.", None)
    base: str | None = _doc("For a single-file source: the diffusers folder or hub id whose VAE, "
                            "text encoder, tokenizer, scheduler and configs go with it; unset, "
                            "the one diffusers infers from the checkpoint's keys.", None)
    quantization: str = _doc("Frozen transformer weights: none, int8 or fp8 (weight-only, "
                             "torchao: pip install 'ltxq[quantization]'). fp8 leaves the LoRA "
                             "targets unquantized.", "none", choices=("none", "int8", "fp8"))
    text_encoder_8bit: bool = _doc("Load T5 with int8 weights (torchao) to encode captions.",
                                   False)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _doc("Folder of videos/images with captions; relative to the config file.")
    resolution: str | list[str] = _doc(  # noqa: RUF009 - a field() with a default
        "Bucket WIDTHxHEIGHTxFRAMES (sides multiples of 32, frames 8k+1), or a list of buckets: "
        "each clip goes to the one nearest its aspect ratio that its length fills (most frames "
        "first), e.g. [\"768x512x49\", \"512x768x49\"]; each batch comes from one bucket.",
        "768x448x89")
    frame_rate: float = _doc("Frame rate of clips whose file does not say (images, some GIFs); "
                             "each video's own rate sets its RoPE time scale.", 25.0, min=1.0)
    caption_prefix: str = _doc("Text put before every caption (a trigger word).", "")
    caption_max_tokens: int = _doc("T5 tokens a caption is encoded to (padded or cut; "
                                   "diffusers' max_sequence_length). Upstream uses 256.", 256,
                                   min=8, max=1024)

    @property
    def buckets(self) -> list[Resolution]:
        """Return the resolution buckets, in the order given."""
        texts = [self.resolution] if isinstance(self.resolution, str) else self.resolution
        return [Resolution.parse(t) for t in texts]

    @property
    def bucket(self) -> Resolution:
        """Return the first (with one bucket, the only) resolution bucket."""
        return self.buckets[0]


@dataclass(frozen=True)
class LoraConfig:
    rank: int = _doc("LoRA rank.", 32, min=1, max=1024)
    alpha: float | None = _doc("LoRA alpha; defaults to the rank (scale 1).", None, min=0.0)
    dropout: float = _doc("Dropout on the LoRA path.", 0.0, min=0.0, max=0.99)
    target_modules: list[str] = _doc(  # noqa: RUF009 - a field() with a default_factory
        "Attention projections that get adapters.", list(TARGET_MODULES))

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


@dataclass(frozen=True)
class OptimizationConfig:
    steps: int = _doc("Optimizer steps in total.", 1500, min=1)
    learning_rate: float = _doc("Peak learning rate of AdamW.", 2e-4, min=0.0, max=1.0)
    optimizer: str = _doc("adamw, or adamw8bit (bitsandbytes: pip install 'ltxq[adamw8bit]'; "
                          "optimizer state in 8 bits).", "adamw", choices=("adamw", "adamw8bit"))
    batch_size: int = _doc("Samples per micro-batch.", 1, min=1)
    gradient_accumulation_steps: int = _doc("Micro-batches per optimizer step.", 1, min=1)
    seed: int = _doc("Seed of LoRA init, data order, noise and sigmas.", 42, min=0)
    scheduler: str = _doc("LR schedule after warmup: linear (1.0 -> 0.1), cosine, constant.",
                          "linear", choices=("linear", "cosine", "constant"))
    warmup_steps: int = _doc("Steps of linear warmup from 0.", 0, min=0)
    max_grad_norm: float = _doc("Gradient clipping norm; 0 disables.", 1.0, min=0.0)
    weight_decay: float = _doc("AdamW weight decay.", 0.01, min=0.0)
    timestep_sampling: str = _doc("Sigma sampling: shifted_logit_normal or uniform.",
                                  "shifted_logit_normal",
                                  choices=("shifted_logit_normal", "uniform"))
    first_frame_conditioning_p: float = _doc(
        "Probability that the first frame stays clean and out of the loss.", 0.1,
        min=0.0, max=1.0)
    mixed_precision: str = _doc("auto (bf16 on GPU, fp32 on CPU), no, fp16 or bf16.", "auto",
                                choices=("auto", "no", "fp16", "bf16"))
    gradient_checkpointing: bool = _doc("Recompute activations to save GPU memory.", False)


@dataclass(frozen=True)
class ValidationConfig:
    prompts: list[str] = _doc(  # noqa: RUF009 - a field() with a default_factory
        "Prompts rendered to validation videos; empty disables.", [])
    negative_prompt: str = _doc("Negative prompt of the validation sampler.",
                                DEFAULT_NEGATIVE_PROMPT)
    interval: int = _doc("Steps between validation videos; 0 = only at the end. Unset, it is "
                         "capped at optimization.steps.", 100, min=0)
    inference_steps: int = _doc("Denoising steps per validation video.", 50, min=1)
    guidance_scale: float = _doc("Classifier-free guidance scale.", 3.5, min=0.0)
    video: str = _doc("Validation video size WIDTHxHEIGHTxFRAMES; sides multiples of 32, "
                       "frames 8k+1.", "768x448x89")
    seed: int = _doc("Seed of the validation noise.", 42, min=0)
    frame_rate: float | None = _doc("Frame rate of the written mp4, also the sampler's time "
                                     "scale; unset, the training clips' most common rate.",
                                     None, min=1.0)
    images: list[str] = _doc(  # noqa: RUF009 - a field() with a default_factory
        "One image per prompt, its first frame: image-to-video samples (the condition "
        "pipeline); empty renders text-to-video. Relative to the config file.", [])
    timesteps: list[float] = _doc(  # noqa: RUF009 - a field() with a default_factory
        "Explicit denoising timesteps, e.g. the distilled models' [1000, 993, 987, 981, 975, "
        "909, 725, 0.03]; empty uses inference_steps.", [], min=0.0, max=1000.0)
    decode_timestep: float | None = _doc(
        "VAE decode timestep of a timestep-conditioned (0.9.1+) VAE; unset, 0.05 there (as "
        "Lightricks samples) and 0 for others.", None, min=0.0, max=1.0)
    decode_noise_scale: float | None = _doc(
        "VAE decode noise scale of a 0.9.1+ VAE; unset, 0.025 there (with the default "
        "decode timestep; else the decode timestep) and 0 for others.", None, min=0.0, max=1.0)

    @property
    def size(self) -> Resolution:
        return Resolution.parse(self.video)


@dataclass(frozen=True)
class CheckpointConfig:
    interval: int = _doc("Steps between checkpoints; 0 = only on stop and at the end. Unset, "
                         "it is capped at optimization.steps.", 250, min=0)
    keep_last: int = _doc("Checkpoint folders kept; older ones are deleted.", 2, min=1)


@dataclass(frozen=True)
class OutputConfig:
    root: str = _doc("Folder that holds lora_r{rank}_job{id}/ (or lora_r{rank}_job{id}-2, "
                     "-3... when another job's folder has that name); relative to the config "
                     "file.", "outputs")


@dataclass(frozen=True)
class ResourcesConfig:
    processes: int = _doc("Data-parallel ranks for this job (one per GPU).", 1, min=1, max=64)
    partition: str | None = _doc("Slurm partition (slurm executor only).", None)
    gpus: int | None = _doc("GPUs per Slurm job (default: the daemon's --gpus; at least "
                            "processes when > 0).", None, min=0)
    time_limit: str | None = _doc("Slurm time limit, e.g. 04:00:00.", None)
    sbatch_args: list[str] = _doc("Extra sbatch arguments.", [])  # noqa: RUF009 - as above


@dataclass(frozen=True)
class TrainingConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset=""))
    lora: LoraConfig = field(default_factory=LoraConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


SECTIONS: dict[str, type] = typing.get_type_hints(TrainingConfig)


# --- job kinds (issue 12): each kind has its own section; `train` is the default -----------
KINDS = ("train", "caption", "preprocess")
DEFAULT_CAPTION_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_CAPTION_PROMPT = "Shortly describe the content of this video in two sentences."


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


def describe_fields(sections: Mapping[str, type] | None = None
                    ) -> list[tuple[str, str, Any, str]]:
    """List (key, type, default, doc) of every config field, for docs and `--help`
    (SECTIONS: {name: class}, default the training sections; {"caption": CaptionConfig})."""
    rows = []
    for section, cls in (SECTIONS if sections is None else sections).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else "(required)")
            rows.append((f"{section}.{f.name}", _type_name(hints[f.name]), default,
                         f.metadata.get("doc", "") + _allowed(f.metadata)))
    return rows


def _allowed(meta: Mapping[str, Any]) -> str:
    """Say a field's range for the docs (its choices are named in its text already)."""
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f" Allowed: {low} to {high}."
    return f" Allowed: >= {low}." if low is not None else ""


# --- parsing helpers -------------------------------------------------------------------


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    # get_type_hints evaluates string annotations: costly, and status parses thousands of jobs.
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


_Check = Callable[[Any, str], Any]  # (value, key) -> the checked value, or ConfigError


@functools.cache
def _section_checks(cls: type, section: str) -> tuple[dict[str, dataclasses.Field],
                                                      tuple[tuple[str, str, bool, _Check], ...]]:
    """Return CLS's fields and, per field, (name, key, required, check), built once per run."""
    hints, fields = _schema(cls)
    checks = tuple(
        (name, f"{section}.{name}",
         f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
         and section != "data",
         _checker(hints[name], f.metadata))
        for name, f in fields.items())
    return fields, checks


def _parse_section(cls: type, table: dict[str, Any], section: str) -> Any:
    fields, checks = _section_checks(cls, section)
    for key in table:
        if key not in fields:
            raise ConfigError(f"unknown key (known: {', '.join(fields)})", key=f"{section}.{key}")
    values = {}
    for name, key, required, check in checks:
        if name not in table:
            if required:
                raise ConfigError("is required", key=key)
            continue
        values[name] = check(table[name], key)
    if section == "data" and "dataset" not in values:
        raise ConfigError("is required (the folder of training videos)", key=f"{section}.dataset")
    return cls(**values)


_UNSET: Any = object()  # a range rule a field does not have


def _checker(hint: Any, meta: Mapping[str, Any]) -> _Check:
    """Return the check of a value of type HINT with META's rules (choices, min, max)."""
    choices = meta.get("choices", _UNSET)
    return _value_checker(hint, choices if choices is _UNSET else tuple(choices),
                          meta.get("min", _UNSET), meta.get("max", _UNSET))


# Checks are built once per (type, rules) and reused: status validates thousands of job files,
# and interpreting the type hints for every value was a third of the time it took.
@functools.cache
def _value_checker(hint: Any, choices: Any, low: Any, high: Any) -> _Check:
    check_type = _type_checker(hint)
    if choices is _UNSET and low is _UNSET and high is _UNSET:
        return check_type

    def check(value: Any, key: str) -> Any:
        value = check_type(value, key)
        if value is None:
            return value
        for item in value if isinstance(value, list) else [value]:
            if choices is not _UNSET and item not in choices:
                raise ConfigError(f"must be one of {', '.join(choices)}, got {_show(item)}",
                                  key=key)
            if low is not _UNSET and item < low:
                raise ConfigError(f"must be >= {low}, got {_show(item)}", key=key)
            if high is not _UNSET and item > high:
                raise ConfigError(f"must be <= {high}, got {_show(item)}", key=key)
        return value
    return check


@functools.cache
def _type_checker(hint: Any) -> _Check:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        values = [o for o in options if o is not type(None)]
        lists = [o for o in values if typing.get_origin(o) is list]
        if lists and len(values) == 2:  # `str | list[str]`: a list, or the one scalar
            as_list, scalar = _type_checker(lists[0]), _type_checker(
                next(o for o in values if o is not lists[0]))
            return lambda value, key: (as_list if isinstance(value, list) else scalar)(value, key)
        inner = _type_checker(values[0])
        if type(None) not in options:
            return inner
        return lambda value, key: None if value is None else inner(value, key)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        check_item, item_name = _type_checker(item_type), _type_name(item_type)

        def check_list(value: Any, key: str) -> Any:
            if not isinstance(value, list):
                raise ConfigError(f"must be a list of {item_name}, got {_show(value)}", key=key)
            return [check_item(v, key) for v in value]
        return check_list
    scalar = _SCALAR_CHECKS.get(hint)
    if scalar is not None:
        return scalar

    def unsupported(value: Any, key: str) -> Any:
        raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module
    return unsupported


def _check_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be a number, got {_show(value)}", key=key)
    if not math.isfinite(value):  # nan slips through every range check: refuse it here
        raise ConfigError(f"must be a finite number, got {_show(value)}", key=key)
    return float(value)


def _check_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be an integer, got {_show(value)}", key=key)
    return value


def _check_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {_show(value)}", key=key)
    return value


def _check_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, got {_show(value)}", key=key)
    return value


_SCALAR_CHECKS: dict[Any, _Check] = {float: _check_float, int: _check_int, bool: _check_bool,
                                     str: _check_str}


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is list:
        return f"list[{_type_name(typing.get_args(hint)[0])}]"
    return getattr(hint, "__name__", str(hint))


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
