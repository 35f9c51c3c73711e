"""Errors a user can cause and fix. The CLI prints these as one clear message, not a traceback."""


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
