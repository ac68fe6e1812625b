"""The New-job form: generated from ltxq.config's field docs (the source of docs/CONFIG.md),
read back into overrides and a grid of jobs, validated by the same code as `ltxq submit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltxq import tomlread
from ltxq.config import describe_fields
from ltxq.errors import ConfigError
from ltxq.job import Job, check_name
from ltxq.spool import Spool
from ltxq.sweep import expand, grid_name, toml_value

SWEEPABLE = ("int", "float")  # "8,16,32" in one of these makes a grid
JOB_FIELDS = [("job.name", "str", "", "A name shown by status (default: the dataset's name)."),
              ("job.priority", "int", 0, "Higher runs first.")]


@dataclass
class Field:
    key: str
    type: str
    default: Any
    doc: str

    @property
    def text(self) -> str:
        """The default as the form shows it."""
        return shown(self.default, self.type)


@dataclass
class Outcome:
    ids: list[int] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # key ("" for the form) -> message


def shown(value: Any, type_name: str) -> str:
    """Return VALUE as the text a form field holds."""
    if value is None or value == "(required)":
        return ""
    if type_name.startswith("list"):
        return "\n".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sections() -> list[tuple[str, list[Field]]]:
    """Return the form's fields grouped by section, in docs/CONFIG.md's order."""
    groups: dict[str, list[Field]] = {}
    for key, type_name, default, doc in [*describe_fields(), *JOB_FIELDS]:
        if key == "data.dataset":
            continue  # the dataset picker
        groups.setdefault(key.split(".", 1)[0], []).append(Field(key, type_name, default, doc))
    return list(groups.items())


def read_form(form: dict[str, str]) -> tuple[dict[str, Any], list[tuple[str, list[Any]]]]:
    """Return (overrides, sweeps) from the fields whose text differs from the default."""
    overrides: dict[str, Any] = {}
    sweeps: list[tuple[str, list[Any]]] = []
    for _, fields in sections():
        for f in fields:
            text = form.get(f.key)
            if text is None:
                continue
            text = text.replace("\r\n", "\n").strip()
            if text == f.text.strip():
                continue
            if f.type.startswith("list"):
                items = [line.strip() for line in text.split("\n") if line.strip()]
                overrides[f.key] = (items if f.type == "list[str]"
                                    else [toml_value(item) for item in items])
            elif f.type == "str":
                overrides[f.key] = text if text or f.default is not None else None
                if overrides[f.key] is None:
                    del overrides[f.key]
            elif not text:
                continue
            elif "," in text and any(t in f.type for t in SWEEPABLE):
                sweeps.append((f.key, [toml_value(v.strip()) for v in text.split(",")]))
            else:
                overrides[f.key] = toml_value(text)
    return overrides, sweeps


def submit_form(spool: Spool, form: dict[str, str], pasted: str, dataset: Path | None,
                datasets_root: Path, base_dir: Path) -> Outcome:
    """Validate the form (and a pasted TOML) into jobs and queue them all, or none."""
    out = Outcome()
    try:
        doc = tomlread.loads(pasted) if pasted.strip() else {}
    except tomlread.TOMLDecodeError as e:
        out.errors["toml"] = f"not valid TOML: {e}"
        return out
    try:
        overrides, sweeps = read_form(form)
        if dataset is not None:
            overrides["data.dataset"] = str(dataset)
        points = expand(sweeps)
        jobs: list[Job] = []
        for point in points:
            job = spool.prepare_doc(doc, base_dir=base_dir, overrides={**overrides, **point},
                                    default_name=dataset.name if dataset else "")
            _check_paths(job, datasets_root, base_dir)
            jobs.append(job.with_meta(name=grid_name(job.meta.name, point)))
            check_name(jobs[-1])  # the grid's suffix counts against the name's length
    except ConfigError as e:
        out.errors[e.key or ""] = e.message if e.key else str(e)
        return out
    out.ids = [spool.publish(job) for job in jobs]
    return out


def _check_paths(job: Job, datasets_root: Path, base_dir: Path) -> None:
    """Refuse a dataset outside the datasets folder, an output root outside BASE_DIR and a
    shell hook: a request names folders, it never chooses where the server reads or writes,
    and never a command to run."""
    if job.meta.on_finish:
        raise ConfigError("hooks are shell commands: set them with `ltxq submit --on-finish` "
                          "on the machine, not from a web page", key="job.on_finish")
    dataset = (base_dir / job.config.data.dataset).resolve()
    if not dataset.is_relative_to(datasets_root.resolve()):
        raise ConfigError("pick a dataset from the list (the server only trains on folders "
                          "under its --datasets)", key="data.dataset")
    root = Path(job.config.output.root)
    if not (base_dir / root).resolve().is_relative_to(base_dir.resolve()):
        raise ConfigError("must be a folder under the server's working folder",
                          key="output.root")
