"""The errors hpsearch raises on purpose. Only the CLI turns them into `Error: ...` lines."""


class HPSearchError(Exception):
    """Base of every error that is the user's input or environment, not a bug in hpsearch."""


class ConfigError(HPSearchError):
    """A study file, a parameter override or a command-line value is invalid."""


class DataError(HPSearchError):
    """A dataset cannot be loaded or split."""


class StorageError(HPSearchError):
    """A storage URL is invalid, unreachable, or holds no such study."""
