"""Route what the libraries print during a run (Python warnings, library loggers) into its log.

diffusers and transformers warn through their own loggers, which write to stderr; torch and
peft use `warnings`. Under the daemon that stderr is the daemon's, shared by every job, so
while a run trains, those messages go to the run's log instead (the job log, or above
`ltxq train`'s bar), where the user looking at the job sees them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Library loggers that do not propagate to the root logger, so need a handler of their own.
LIBRARY_LOGGERS = ("diffusers", "transformers")

# Known-harmless messages, dropped rather than logged.
_DROPPED = (
    # diffusers tokenizes every prompt a second time, untruncated, only to detect truncation;
    # transformers warns about that second pass, and diffusers then says what it cut off.
    "Token indices sequence length is longer than the specified maximum sequence length",
)


class _ToRunLog(logging.Handler):
    """A logging handler that writes each record to a run's log as one or more lines."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__()
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if message.startswith(_DROPPED):
                return
            library = record.name.split(".", 1)[0] or "root"
            _log_lines(self._log, f"{library} {record.levelname.lower()}: {message}")
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def _log_lines(log: Callable[[str], None], text: str) -> None:
    """Log TEXT line by line (a job log holds one event per line), continuations indented."""
    first, *rest = text.rstrip().splitlines() or [""]
    log(first)
    for line in rest:
        log("  " + line)


@contextmanager
def routed_to(log: Callable[[str], None]) -> Iterator[None]:
    """Send warnings and library log records to LOG until the block ends, then restore."""
    handler = _ToRunLog(log)
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    root = logging.getLogger()
    root.addHandler(handler)  # accelerate and others propagate to the root logger

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        _log_lines(log, f"warning: {category.__name__}: {message} ({filename}:{lineno})")

    try:
        # catch_warnings restores the filters and showwarning afterwards; the filters keep
        # their defaults (each warning once per place), only where it is shown changes.
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        root.removeHandler(handler)
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate

