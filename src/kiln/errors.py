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


class MissingExtra(KilnError):
    """An optional part of Kiln whose libraries are not installed."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-line error quotes of a library's long message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def install_line(extra: str) -> str:
    """The command that installs an extra, in a clone of Kiln (the distribution is
    kiln-workbench; the import name and the command stay `kiln`)."""
    return f"pip install -e '.[{extra}]'"


def require(module: str, extra: str, needed_by: str):
    """Import an optional library, or say in one line which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the library is there but broken: its own error says more
        raise MissingExtra(
            f"{needed_by} needs {module.split('.')[0]}, from Kiln's '{extra}' extra: "
            f"{install_line(extra)} (in your clone of Kiln; or pip install "
            f"'kiln-workbench[{extra}]')"
        ) from None
