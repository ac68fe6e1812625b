"""The job file: TOML text <-> a validated Job (the user's training config + [job] table).

No filesystem, no torch. The training sections are kept as the user wrote them (only
relative paths made absolute), so a job file stays short and readable; `Job.config` is the
validated, typed view with every default filled in.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from ltxq import tomlread
from ltxq.configs import KINDS
from ltxq.configs.fields import _checker, _show
from ltxq.errors import ConfigError

if TYPE_CHECKING:
    from ltxq.config import TrainingConfig

# [job] keys a user may set in a submitted file; the rest are ltxq's bookkeeping.
USER_JOB_KEYS = ("kind", "name", "priority", "max_attempts", "after", "on_finish")
MAX_NAME_LENGTH = 200
# A job file needs three levels (section, key, list); anything far deeper is hostile, and
# tomllib recurses per bracket and is quadratic in the parts of one dotted key.
MAX_TOML_NESTING = 32


@dataclass(frozen=True)
class JobMeta:
    """The [job] table ltxq keeps in every job file. The state is the file's folder."""

    id: int | None = None
    kind: str = "train"           # train, caption or preprocess: which section and run function
    name: str = ""
    priority: int = 0
    max_attempts: int = 3
    attempts: int = 0
    after: list[int] = field(default_factory=list)
    on_finish: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    worker_start: str | None = None  # the worker process's start (boot id:ticks): a 2nd witness
    author_uid: int | None = None   # who wrote the job's content (the spool keeps it; see trust)
    device: str | None = None
    error: str | None = None
    output_dir: str | None = None
    checkpoint: str | None = None
    validation_sample: str | None = None
    peak_memory_gib: float | None = None  # the trainer's peak device memory (CPU: resident)
    step: int | None = None
    slurm_job_id: str | None = None
    key: str | None = None        # unique per job (uuid4 hex); its output folder records it


_META_RULES: dict[str, dict[str, Any]] = {
    "peak_memory_gib": {"min": 0.0, "max": 1e6},
    "priority": {"min": -1_000_000, "max": 1_000_000},
    "max_attempts": {"min": 1, "max": 1000},
    "attempts": {"min": 0},
    "id": {"min": 1},
    "kind": {"choices": KINDS},
    "after": {"min": 1},
}


@dataclass(frozen=True)
class Job:
    """A parsed job file."""

    meta: JobMeta
    raw: dict[str, Any]          # the training sections as written (paths made absolute)
    # What generic code reads (dataset, model, resources); for a caption or preprocess job a
    # training config built from its section, never trained.
    config: TrainingConfig
    task: Any = None             # the kind's own config, what its run function gets

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def work(self) -> Any:
        """The config the kind's run function takes: `config` for train, else `task`."""
        return self.config if self.task is None else self.task

    @property
    def id(self) -> int:
        assert self.meta.id is not None
        return self.meta.id

    def with_meta(self, **changes: Any) -> Job:
        """Return a copy with [job] fields changed."""
        return dataclasses.replace(self, meta=dataclasses.replace(self.meta, **changes))

    def with_raw(self, raw: dict[str, Any], base_dir: Path | None = None) -> Job:
        """Return a copy with new training sections, validated."""
        config, task = _parse_kind(self.meta.kind, raw, base_dir=base_dir)
        return dataclasses.replace(self, raw=raw, config=config, task=task)

    def fingerprint(self) -> str:
        """Hash of the training config (defaults filled), for duplicate detection.

        Only the config: [job] (name, priority, key...) never makes two jobs different.
        """
        import hashlib  # submit --unique and the web form's duplicate check only
        if self.task is not None:  # another kind: its own section, and the kind
            text = json.dumps([self.kind, dataclasses.asdict(self.task)], sort_keys=True)
            return hashlib.sha256(text.encode()).hexdigest()[:16]
        text = json.dumps(dataclasses.asdict(self.config), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def output_dir(self) -> Path:
        """Where this job's outputs go: {output.root}/lora_r{rank}_job{id}/."""
        if self.meta.output_dir:
            return Path(self.meta.output_dir)
        if self.task is not None:  # caption and preprocess jobs work on their dataset
            return Path(self.task.dataset)
        return Path(self.config.output.root) / f"lora_r{self.config.lora.rank}_job{self.id}"


def parse_job(text: str | bytes, *, file: Path | str | None = None,
              base_dir: Path | None = None, require_dataset_exists: bool = False) -> Job:
    """Parse and validate a job file's text; relative paths resolve against BASE_DIR."""
    return _job_from_doc(load_toml(text, file=file), owned=True, file=file, base_dir=base_dir,
                         require_dataset_exists=require_dataset_exists)


def load_toml(data: bytes | str, *, file: Path | str | None = None) -> dict[str, Any]:
    """Parse TOML DATA (UTF-8 bytes or text); ConfigError naming FILE if it is not UTF-8, not
    TOML, or nested more than MAX_TOML_NESTING deep."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", file=file) from None
    deep = _too_deep(text)
    if deep:
        raise ConfigError(f"invalid TOML: {deep} nested more than {MAX_TOML_NESTING} deep",
                          file=file)
    try:
        return tomlread.loads(text)
    except tomlread.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", file=file) from None
    except RecursionError:  # a backstop: _too_deep already bounds what tomllib recurses on
        raise ConfigError("invalid TOML: nested too deep", file=file) from None


# One part of a dotted key: bare, "basic" or 'literal'.
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
# What nests in TOML text: brackets and dotted keys. Strings and comments are matched whole,
# so the brackets and dots inside them are skipped. Kept as text: only a file with many
# brackets or dots needs it, and `re` compiles it then (and keeps it), not at every import.
_NESTING = (r'''
      """(?:[^"\\]|\\[\s\S]|"(?!""))*""""{0,2}     # multi-line basic string
    | '\''[\s\S]*?'\'''{0,2}                     # multi-line literal string
    | (?P<chain>{part}(?:[ \t]*\.[ \t]*{part})+)  # a dotted key (or a float: one dot)
    | "(?:[^"\\\n]|\\.)*"                         # basic string
    | '[^'\n]*'                                   # literal string
    | \#[^\n]*                                    # comment
    | (?P<open>[\[{{])
    | (?P<close>[\]}}])
'''.replace("{part}", _KEY_PART).replace("{{", "{").replace("}}", "}"))


def _too_deep(text: str) -> str | None:
    """Say what nests deeper than MAX_TOML_NESTING in TEXT ("brackets", "a dotted key")."""
    limit = MAX_TOML_NESTING
    # Every ordinary job file takes this path: too few brackets and dots to nest that deep.
    if text.count("[") + text.count("{") <= limit and text.count(".") < limit:
        return None
    depth = 0
    for m in re.finditer(_NESTING, text, re.VERBOSE):
        if m["open"]:
            depth += 1
            if depth > limit:
                return "brackets"
        elif m["close"]:
            depth = max(depth - 1, 0)
        elif m["chain"] and len(re.findall(_KEY_PART, m["chain"])) > limit:
            return "a dotted key"
    return None


def job_from_dict(doc: dict[str, Any], *, file: Path | str | None = None,
                  base_dir: Path | None = None, require_dataset_exists: bool = False) -> Job:
    """Validate a TOML dict (training sections plus optional [job]); DOC is not changed."""
    return _job_from_doc(doc, owned=False, file=file, base_dir=base_dir,
                         require_dataset_exists=require_dataset_exists)


def _job_from_doc(doc: dict[str, Any], *, owned: bool, file: Path | str | None,
                  base_dir: Path | None, require_dataset_exists: bool) -> Job:
    """Validate DOC; OWNED: nobody else holds DOC (fresh from the parser), so Job.raw may be
    made of its tables instead of a deep copy (6% of a cold `status` was that copy)."""
    doc = dict(doc)
    try:
        meta = parse_meta(doc.pop("job", {}))
        config, task = _parse_kind(meta.kind, doc, base_dir=base_dir,
                                   require_dataset_exists=require_dataset_exists)
    except ConfigError as e:
        raise e.with_file(file) if file else e from None
    # Validated training sections hold only strings, numbers, booleans and lists of them, so
    # a document of our own needs no copy; the paths are written into it.
    raw = doc if owned else _plain_copy(doc)
    if task is None:
        _absolutize_raw(raw, config)
    else:
        _absolutize_task(meta.kind, raw, task)
    return Job(meta=meta, raw=raw, config=config, task=task)


def _parse_kind(kind: str, doc: dict[str, Any], *, base_dir: Path | None = None,
                require_dataset_exists: bool = False) -> tuple[TrainingConfig, Any]:
    """Validate DOC's sections for a job of KIND: (the generic training view, the task or None)."""
    # The sections' dataclasses are a third of this module's import: status over cached jobs,
    # cancel and friends never validate a training config, so they never pay for it.
    from ltxq.config import (
        DataConfig,
        ModelConfig,
        TrainingConfig,
        parse_config,
        parse_kind_sections,
        preprocess_training_config,
    )

    if kind == "train":
        return parse_config(doc, base_dir=base_dir,
                            require_dataset_exists=require_dataset_exists), None
    task, resources = parse_kind_sections(kind, doc, base_dir=base_dir,
                                          require_dataset_exists=require_dataset_exists)
    if kind == "preprocess":
        return preprocess_training_config(task, resources), task
    view = TrainingConfig(model=ModelConfig(source=task.model, revision=task.revision),
                          data=DataConfig(dataset=task.dataset), resources=resources)
    return view, task


def _absolutize_task(kind: str, raw: dict[str, Any], task: Any) -> None:
    """Write the kind's resolved dataset and local model path back into RAW."""
    section = raw.setdefault(kind, {})
    section["dataset"] = task.dataset
    if "model" in section:
        section["model"] = task.model
    if kind == "preprocess" and section.get("base"):
        section["base"] = task.training.model.base


def parse_meta(table: Any) -> JobMeta:
    """Validate a [job] table."""
    if not isinstance(table, dict):
        raise ConfigError("must be a table", key="job")
    values = {}
    for key, value in table.items():
        check = _META_CHECKS.get(key, _UNKNOWN)
        if check is _UNKNOWN:
            raise ConfigError(f"unknown key (known: {', '.join(USER_JOB_KEYS)}, ...)",
                              key=f"job.{key}")
        if check is None:  # a date-time
            if not isinstance(value, datetime):
                raise ConfigError(f"must be a date-time, got {_show(value)}", key=f"job.{key}")
            values[key] = value if value.tzinfo else value.replace(tzinfo=UTC)
            continue
        values[key] = check(value, f"job.{key}")
    return JobMeta(**values)


_META_TYPES: dict[str, Any] = {
    "id": int | None, "kind": str, "name": str, "priority": int, "max_attempts": int,
    "attempts": int,
    "after": list[int], "on_finish": str | None, "submitted_at": datetime,
    "started_at": datetime, "finished_at": datetime, "worker": str | None,
    "worker_start": str | None, "author_uid": int | None,
    "device": str | None, "error": str | None, "output_dir": str | None,
    "checkpoint": str | None, "validation_sample": str | None,
    "peak_memory_gib": float | None, "step": int | None,
    "slurm_job_id": str | None, "key": str | None,
}
assert set(_META_TYPES) == {f.name for f in dataclasses.fields(JobMeta)}
# Each [job] key's check, built once (status validates thousands of files); None: a date-time.
_META_CHECKS: dict[str, Any] = {
    key: None if hint is datetime else _checker(hint, _META_RULES.get(key, {}))
    for key, hint in _META_TYPES.items()}
_UNKNOWN: Any = object()
_JOB_KEY = re.compile(r"[0-9a-f]{8,64}")


def _check_job_key(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _JOB_KEY.fullmatch(value):
        raise ConfigError(f"must be 8 to 64 lowercase hex digits (ltxq sets it), got "
                          f"{_show(value)}", key=key)
    return value


_META_CHECKS["key"] = _check_job_key
# Bidirectional embeddings, overrides and isolates: they reorder how a name is displayed.
_BIDI_CONTROLS = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


def check_name(job: Job, file: Path | str | None = None) -> None:
    """Refuse a job name that is too long or holds a line break, another control character or a
    bidirectional control (it is one line in status, logs and hook environments)."""
    name = job.meta.name
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"must be at most {MAX_NAME_LENGTH} characters, got {len(name)}",
                          key="job.name", file=file)
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise ConfigError(f"must not contain line breaks or control characters, got "
                          f"{name!r}", key="job.name", file=file)
    bidi = sorted({f"U+{ord(c):04X}" for c in name if c in _BIDI_CONTROLS})
    if bidi:
        raise ConfigError(f"must not contain bidirectional control characters "
                          f"({', '.join(bidi)})", key="job.name", file=file)


def dump_job(job: Job) -> str:
    """Render JOB as TOML text: [job] first, then the training sections."""
    meta = {k: v for k, v in dataclasses.asdict(job.meta).items()
            if v is not None and v != [] and not (k == "error" and v == "")
            and not (k == "kind" and v == "train")}  # train files stay as they were
    return tomli_w.dumps({"job": meta, **job.raw})


def _absolutize_raw(raw: dict[str, Any], config: TrainingConfig) -> None:
    """Write the paths the config resolved back into RAW, so the file is portable."""
    raw.setdefault("data", {})["dataset"] = config.data.dataset
    if "output" in raw or config.output.root != "outputs":
        raw.setdefault("output", {})["root"] = config.output.root
    if "model" in raw and "source" in raw["model"]:
        raw["model"]["source"] = config.model.source


def _plain_copy(value: Any) -> Any:
    """Deep-copy TOML data as JSON data: tables and arrays copied, dates and times as text."""
    if isinstance(value, dict):
        return {str(k): _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(v) for v in value]
    if value is None or isinstance(value, (str, int, float)):  # bool is an int
        return value
    return str(value)


def now() -> datetime:
    """The current time, UTC, to the second (what job files record)."""
    return datetime.now(UTC).replace(microsecond=0)
