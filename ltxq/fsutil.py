"""Atomic file publication and non-blocking locks: the two primitives the spool is built on."""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path
from typing import Self

_UMASK: int | None = None


def umask() -> int:
    """Return the process umask (read once; os.umask can only be read by setting it)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def fsync(path: Path) -> None:
    """Persist file or folder PATH (for a folder: its entries; a rename is not durable until
    its folder is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_dir = fsync  # the name most callers read best: they persist a rename


def write_atomic(dest: Path, data: str | bytes, tmp_dir: Path, *, durable: bool = True) -> None:
    """Write DATA to DEST so that readers see the old file or the new one, never a torn one.

    Staged in TMP_DIR (same filesystem; made again if someone deleted it), fsynced, renamed over
    DEST, then DEST's folder fsynced. DURABLE=False skips both fsyncs (caches: a file torn by a
    power cut is only a miss).
    """
    import tempfile  # here: status and friends load this module without writing a file

    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=dest.name + ".", suffix=".tmp")
    except FileNotFoundError:  # tmp/ is safe to delete at any time: make it again
        os.makedirs(tmp_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=dest.name + ".", suffix=".tmp")
    try:
        # mkstemp makes 0600; a shared spool wants what the umask allows.
        os.fchmod(fd, 0o666 & ~umask())
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    if durable:
        fsync_dir(dest.parent)


_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def not_regular(mode: int) -> str | None:
    """Return what a non-regular file of MODE is ("directory", "named pipe"...), else None."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "special file")


MAX_JOB_FILE_BYTES = 1 << 20  # a job file is a few hundred bytes; 1 MiB is generous


def read_regular(path: Path, limit: int = MAX_JOB_FILE_BYTES) -> tuple[os.stat_result, bytes]:
    """Return the stat and bytes of regular file PATH (a link to one is followed).

    Never blocks on a named pipe: NotRegularFile for a directory, pipe, socket, device or broken
    link, and for a file larger than LIMIT bytes (never read whole); FileNotFoundError if
    nothing is there.
    """
    from ltxq.errors import NotRegularFile, TooLarge

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.islink(path):
            raise NotRegularFile("broken symbolic link", file=path) from None
        raise
    except OSError as e:  # ELOOP, EACCES on a socket...: not something we can read as a job
        if os.path.lexists(path):
            raise NotRegularFile(f"cannot open: {e.strerror or e}", file=path) from None
        raise
    try:
        st = os.fstat(fd)
        kind = not_regular(st.st_mode)
        if kind is not None:
            raise NotRegularFile(kind, file=path)
        if st.st_size > limit:
            raise TooLarge(_too_large(st.st_size, limit), file=path)
        data = _read_at_most(fd, limit + 1)
        if len(data) > limit:  # it grew after the fstat
            raise TooLarge(_too_large(len(data), limit, grew=True), file=path)
        return st, data
    finally:
        os.close(fd)


def _read_at_most(fd: int, size: int) -> bytes:
    """Read from FD until end of file or SIZE bytes."""
    chunks, left = [], size
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, grew: bool = False) -> str:
    at_least = "at least " if grew else ""
    return f"too large: {at_least}{size} bytes (the limit is {_human(limit)})"


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def move(src: Path, dest: Path) -> None:
    """Rename SRC to DEST and persist both folders; FileNotFoundError if someone moved it first."""
    os.rename(src, dest)
    fsync_dir(dest.parent)
    if src.parent != dest.parent:
        fsync_dir(src.parent)


def free_name(path: Path) -> Path:
    """Return PATH, or PATH with a .1, .2, ... suffix if that name is taken."""
    candidate, n = path, 0
    while candidate.exists() or Path(f"{candidate}.error").exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


class Lock:
    """An flock(2) lock on a separate .lock file: held means alive; the kernel frees it when the
    holder dies, even by kill -9. The file is never deleted (a deleted lock file would let a
    second process lock a new file of the same name: see `replaced`). Two Lock objects on one
    path exclude each other even in one process (flock belongs to the open file)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return False at once if someone holds it."""
        if self._fd is not None:
            return True
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        mode = 0o666 & ~umask()  # a shared spool: other users' daemons must open it too
        try:
            return os.open(self.path, flags, mode)
        except FileNotFoundError:  # locks/ deleted by hand: made again
            os.makedirs(self.path.parent, exist_ok=True)
            return os.open(self.path, flags, mode)

    def acquire(self, timeout: float = 60.0) -> None:
        """Take the lock, waiting up to TIMEOUT seconds (then TimeoutError)."""
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.path} is locked by another process")
            time.sleep(0.05)

    def release(self) -> None:
        """Release the lock (a no-op if not held)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the file releases its flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def replaced(self) -> bool:
        """Return True if this held lock's file is no longer the file at its path (someone
        deleted or replaced it: another process could take a fresh lock there)."""
        if self._fd is None:
            return False
        held = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (now.st_ino, now.st_dev) != (held.st_ino, held.st_dev)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
