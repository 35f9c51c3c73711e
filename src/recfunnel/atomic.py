"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

# The exit status of a process killed by SIGTERM, as a shell reports it (128 + 15).
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


def umask_mode(directory: bool = False) -> int:
    """The permissions a plain open() / mkdir() would give under the current umask.

    mkstemp and mkdtemp create private (0600 / 0700) files and folders; a report or a run
    directory renamed into place should be as readable as any other file the user writes.
    """
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises `Terminated` (a SystemExit(143)) in the main thread, so
    cleanup runs.

    Python leaves SIGTERM at the OS default, which ends the process on the spot: no
    `finally` or `except BaseException` runs and temp files stay behind. As an exception,
    a SIGTERM unwinds the stack (removing them) and still ends the process with status 143.
    Only the default handler is replaced: a handler the application installed, or SIGTERM
    being ignored, is left alone, as is any thread but the main one (Python runs signal
    handlers there only). The previous handler comes back on exit.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(SystemExit):
    """SIGTERM as an exception (exit status 143): `finally` and `except BaseException`
    blocks run and remove their temp files; the CLI reports it in one line."""

    def __init__(self) -> None:
        super().__init__(SIGTERM_EXIT_CODE)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise Terminated()
