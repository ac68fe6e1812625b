"""The one exception hierarchy of ltxq; caught only at the edges (CLI, daemon)."""

from __future__ import annotations

from pathlib import Path


class LtxqError(Exception):
    """Base of every error ltxq raises on purpose; its text is shown to the user as is."""

    exit_code = 1


class ConfigError(LtxqError):
    """A job or training config is invalid: names the file and the key."""

    exit_code = 2

    def __init__(self, message: str, *, key: str | None = None, file: Path | str | None = None):
        self.message = message
        self.key = key
        self.file = file
        super().__init__(self._text())

    def _text(self) -> str:
        parts = [str(p) for p in (self.file, self.key) if p]
        return ": ".join([*parts, self.message])

    def with_file(self, file: Path | str) -> ConfigError:
        """Return the same error, attributed to FILE."""
        return ConfigError(self.message, key=self.key, file=file)


class NotRegularFile(ConfigError):
    """A job file's name points at a directory, a pipe, a broken link...: never opened as a job."""

    def __init__(self, kind: str, *, file: Path | str | None = None):
        self.kind = kind
        super().__init__(f"not a regular file ({kind})", file=file)

    def with_file(self, file: Path | str) -> NotRegularFile:
        return type(self)(self.kind, file=file)


class TooLarge(NotRegularFile):
    """A job file over the size cap: never read whole, set aside like a pipe would be."""

    def __init__(self, kind: str, *, file: Path | str | None = None):
        self.kind = kind
        ConfigError.__init__(self, kind, file=file)


class BadArgument(LtxqError, ValueError):
    """A Python API argument is out of range (an unknown state, an id that is no number)."""

    exit_code = 2


class JobNotFound(LtxqError):
    """No job with that id is in the spool."""


class WrongState(LtxqError):
    """The job is not in a state that allows the operation."""


class TrainingError(LtxqError):
    """Training cannot go on for a reason the user can act on (bad data, missing model)."""


class NoSpool(LtxqError):
    """The --spool folder is not a spool (only submit and daemon make one)."""
