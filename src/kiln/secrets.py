"""Passwords in database URLs (`kiln tune --storage postgresql://user:PASSWORD@host/db`) never
reach a file, a process's arguments or a message.

- `mask` hides the password of every URL in a text (command lines recorded in info.json, hints,
  crash reports);
- a config file names the URL through an environment variable, `storage: ${KILN_STORAGE}` or
  `postgresql://user:${DB_PASSWORD}@host/db`, expanded only where the URL is used (`expand`), so
  that config.yaml, best.yaml and reports keep the `${...}` and never the secret;
- a literal password written in a config is refused (`refuse_literal_password`), naming the
  variable to use instead.
"""

from __future__ import annotations

import os
import re

from kiln.errors import ConfigError

# scheme://user:PASSWORD@host... (the password is whatever stands between ':' and '@')
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s:/@]*:)(?P<password>\S+)@", re.IGNORECASE
)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
STORAGE_VARIABLE = "KILN_STORAGE"


def mask(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***@", text)


def has_literal_password(url: str) -> bool:
    """True for scheme://user:secret@host, False when the password is a ${VARIABLE}."""
    found = _URL_PASSWORD.search(url)
    return found is not None and not _ENV.fullmatch(found["password"])


def refuse_literal_password(url: str | None, key: str = "tune.storage") -> str | None:
    """A config may name a database URL, but not hold its password (config.yaml of every trial,
    best.yaml and the report would carry it)."""
    if url and has_literal_password(url):
        raise ValueError(
            f"{mask(url)} holds a password, which would be copied into every trial's "
            f"config.yaml: write `{key.rsplit('.', 1)[-1]}: ${{{STORAGE_VARIABLE}}}` and export "
            f"{STORAGE_VARIABLE}='{mask(url)}' with the real password (or pass --storage, or "
            "put just the password in a variable: user:${DB_PASSWORD}@host)"
        )
    return url


def expand(text: str, key: str = "tune.storage") -> str:
    """`${VARIABLE}` replaced by its value from the environment; an unset one is an error that
    names it."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"{key} uses ${{{name}}}, but the environment variable {name} is not set: "
                f"export {name}=... before running kiln"
            )
        return os.environ[name]

    return _ENV.sub(value, text)
