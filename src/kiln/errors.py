"""One exception type for everything a user can get wrong, so the CLI can print it as one line."""


class KilnError(Exception):
    """A problem the user can fix: the message says what, where and what to do."""

    exit_code = 1


class ConfigError(KilnError):
    """The config (file or override) is invalid; raised before anything runs."""

    exit_code = 2


class DataError(KilnError):
    """A dataset is missing, incomplete or unreadable."""


class RunError(KilnError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""
