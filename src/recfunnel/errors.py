"""Errors a user can cause and fix. The CLI prints these as one clear message, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class RecfunnelError(Exception):
    """Base class for every error that is the user's to fix (bad input, missing data, ...)."""


class DataError(RecfunnelError):
    """The data set is missing, corrupt or malformed. The message names the file and line."""


class DownloadError(DataError):
    """The archive could not be fetched or failed its checksum."""


class ConfigError(RecfunnelError):
    """A configuration value or command-line option is invalid."""


class NotFittedError(RecfunnelError):
    """A model was used before `fit` was called."""


def run_script(main: Callable[[], int]) -> NoReturn:
    """Exit with `main()`'s status, for the scripts under bench/: a RecfunnelError (a bad run
    directory or data folder) is one line naming the script, status 2, as in the CLI."""
    try:
        raise SystemExit(main())
    except RecfunnelError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
