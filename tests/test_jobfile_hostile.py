"""Hostile job files: huge, deeply nested, odd names, forged keys; each refused in one line."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from conftest import write_config

from ltxq import fsutil
from ltxq.errors import ConfigError, NotRegularFile
from ltxq.job import (
    MAX_NAME_LENGTH,
    MAX_TOML_NESTING,
    check_name,
    dump_job,
    job_from_dict,
    load_toml,
    parse_job,
)
from ltxq.sweep import parse_sweep, toml_value

DATA = {"data": {"dataset": "/clips", "resolution": "64x64x9"},
        "validation": {"video": "64x64x9"}}

# --- size ----------------------------------------------------------------------------------


def test_a_huge_file_is_refused_from_its_size_alone(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    with open(path, "wb") as f:
        f.truncate(1 << 32)  # sparse: 4 GiB that take no disk, and no memory unless read
    start = time.monotonic()
    with pytest.raises(NotRegularFile) as info:
        fsutil.read_regular(path)
    assert time.monotonic() - start < 1.0  # not read
    assert info.value.kind == "too large: 4294967296 bytes (the limit is 1 MiB)"
    assert str(info.value).startswith(f"{path}: ")


def test_the_limit_is_inclusive_and_configurable(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b"x" * fsutil.MAX_JOB_FILE_BYTES)
    assert len(fsutil.read_regular(path)[1]) == fsutil.MAX_JOB_FILE_BYTES
    path.write_bytes(b"x" * 11)
    assert fsutil.read_regular(path, limit=11)[1] == b"x" * 11
    with pytest.raises(NotRegularFile, match=r"too large: 11 bytes \(the limit is 10 bytes\)"):
        fsutil.read_regular(path, limit=10)


def test_a_file_that_grows_after_the_stat_is_read_only_to_the_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat

    def small_fstat(fd: int) -> os.stat_result:  # the size it had a moment before
        st = list(real_fstat(fd))
        st[6] = 5
        return os.stat_result(st)

    monkeypatch.setattr(fsutil.os, "fstat", small_fstat)
    reads: list[int] = []
    real_read = os.read
    monkeypatch.setattr(fsutil.os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(NotRegularFile, match="too large: at least 11 bytes"):
        fsutil.read_regular(path, limit=10)
    assert sum(reads) == 11


def test_a_huge_pending_file_is_moved_to_invalid_untouched(tmp_path: Path) -> None:
    from ltxq import Spool

    (tmp_path / "ds").mkdir()
    spool = Spool(tmp_path / "spool", settle_seconds=0)
    spool.submit(write_config(tmp_path / "job.toml", dataset="ds", steps=2))
    big = spool.dir("pending") / "big.toml"
    with open(big, "wb") as f:
        f.truncate(fsutil.MAX_JOB_FILE_BYTES + 1)
    os.utime(big, (0, 0))
    entries, problems = spool.scan()
    assert [e.id for e in entries] == [1]
    assert [p.origin for p in problems] == ["pending/big.toml"]
    assert "too large: 1048577 bytes (the limit is 1 MiB)" in problems[0].error
    assert (spool.dir("invalid") / "big.toml").stat().st_size == fsutil.MAX_JOB_FILE_BYTES + 1


# --- nesting -------------------------------------------------------------------------------

DEEP = 100_000


@pytest.mark.parametrize(("text", "what"), [
    ("a = " + "[" * DEEP + "]" * DEEP, "brackets"),
    ("a = " + "{b=" * DEEP + "}" * DEEP, "brackets"),
    ("a = " + "[{b=" * DEEP + "}]" * DEEP, "brackets"),
    ("a" + ".b" * DEEP + " = 1", "a dotted key"),        # tomllib is quadratic in these
    ("[a" + ".b" * DEEP + "]\nx = 1", "a dotted key"),
    ("a = {" + "b." * DEEP + "c = 1}", "a dotted key"),
    ('"x.y".' * 40 + "z = 1", "a dotted key"),
])
def test_deep_nesting_is_invalid_toml_in_one_line(text: str, what: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_job(text, file="deep.toml")
    assert time.monotonic() - start < 5.0  # a guard against the quadratic parse, not a benchmark
    assert str(info.value) == (f"deep.toml: invalid TOML: {what} nested more than "
                               f"{MAX_TOML_NESTING} deep")


def test_a_deep_value_given_on_the_command_line_or_the_form_stays_text() -> None:
    """--set, --sweep and the web form's fields parse values as TOML through the guarded
    parser: a value nested 100,000 deep stays text (the config's type check refuses it in one
    line), never a RecursionError."""
    deep = "[" * DEEP
    assert toml_value(deep) == deep
    assert parse_sweep(f"lora.rank={deep}") == ("lora.rank", [deep])
    assert toml_value("[1, 2]") == [1, 2]


@pytest.mark.parametrize("text", [
    'name = "' + "[" * 1000 + '"',
    "name = '" + "{" * 1000 + "'",
    'name = """\n' + "[" * 1000 + '\\"""\n"""',
    "name = '''\n" + "[" * 1000 + "\n'''",
    "# " + "[" * 1000 + "\nname = 'x'",
    "x = [" + "1.5, " * 1000 + "]",
    'x = "' + "a." * 1000 + '"',
    "".join(f"a.b.c.d{i} = 1\n" for i in range(40)),
    "x = [" + "[1]," * 1000 + "]",
])
def test_brackets_and_dots_in_strings_comments_and_wide_arrays_are_fine(text: str) -> None:
    assert load_toml(text)


def test_nesting_up_to_the_limit_parses() -> None:
    n = MAX_TOML_NESTING
    assert load_toml("a = " + "[" * n + "]" * n)
    assert load_toml("a" + ".b" * (n - 1) + " = 1")


def test_not_utf8_and_not_toml() -> None:
    with pytest.raises(ConfigError, match=r"^f\.toml: not UTF-8 text \(byte 6\)$"):
        load_toml(b"a = 1\n\xff", file="f.toml")
    with pytest.raises(ConfigError, match=r"^f\.toml: invalid TOML: "):
        load_toml("a = ", file="f.toml")


def _nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("doc", "words"), [
    ({**DATA, "validation": {"prompts": _nested_list(DEEP)}},
     "validation.prompts: must be a string, got [[[[...]]]]"),
    ({**DATA, "job": {"after": _nested_list(DEEP)}}, "job.after: must be an integer"),
    ({**DATA, "job": {"name": _nested_list(DEEP)}}, "job.name: must be a string"),
    ({**DATA, "job": {"submitted_at": _nested_list(DEEP)}}, "job.submitted_at: must be a date"),
    ({**DATA, "optimization": {"scheduler": "x" * 10**6}}, "optimization.scheduler: must be one"),
    ({**DATA, "data": {"dataset": "/c", "resolution": "x" * 10**6}}, "data.resolution: expected"),
])
def test_nested_or_huge_values_are_refused_in_one_short_line(doc: dict, words: str) -> None:
    """A dict from anywhere (not only load_toml) is safe: no RecursionError, no megabyte error."""
    with pytest.raises(ConfigError) as info:
        job_from_dict(doc, file="f.toml")
    message = str(info.value)
    assert message.startswith(f"f.toml: {words}") and "\n" not in message
    assert len(message) < 300


# --- names ---------------------------------------------------------------------------------


def _named(name: str):
    return job_from_dict({**DATA, "job": {"name": name}})


@pytest.mark.parametrize(("name", "words"), [
    ("evil\u202etxt.exe", "must not contain bidirectional control characters (U+202E)"),
    ("a\u2066b\u2069c\u202a", "bidirectional control characters (U+202A, U+2066, U+2069)"),
    ("two\nlines", "must not contain line breaks or control characters"),
    ("bell\x07", "control characters"),
    ("c1\x85", "control characters"),
    ("n" * (MAX_NAME_LENGTH + 1), f"must be at most {MAX_NAME_LENGTH} characters, got 201"),
])
def test_bad_names_are_refused(name: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_name(_named(name), "f.toml")
    assert str(info.value).startswith("f.toml: job.name: ")
    assert words in str(info.value)


@pytest.mark.parametrize("name", ["", "cake", "n" * MAX_NAME_LENGTH, "Ünïcode 名前 ok",
                                  "arabic \u0627\u0644\u0639", "rtl mark \u200f ok"])
def test_good_names_pass(name: str) -> None:
    check_name(_named(name))


# --- the job key ---------------------------------------------------------------------------


def test_the_key_round_trips_and_is_not_part_of_the_fingerprint() -> None:
    key = uuid.uuid4().hex
    job = job_from_dict({**DATA, "job": {"id": 3, "key": key}})
    again = parse_job(dump_job(job))
    assert again.meta.key == key and again.meta == job.meta
    assert job.fingerprint() == job.with_meta(key=uuid.uuid4().hex).fingerprint()
    assert job.fingerprint() == job.with_meta(key=None).fingerprint()
    assert "key" not in dump_job(job.with_meta(key=None))


@pytest.mark.parametrize("key", ["", "XYZ", "abc", "A" * 32, "g" * 32, "a" * 65, 12345678,
                                 "0123456789abcdef\n"])
def test_a_forged_key_is_refused(key: object) -> None:
    with pytest.raises(ConfigError, match=r"^f\.toml: job\.key: must be 8 to 64 lowercase hex"):
        job_from_dict({**DATA, "job": {"key": key}}, file="f.toml")
