"""Whose process this is. The `kiln` command's entry points (the console script and
`python -m kiln`) mark theirs as Kiln's own: a process that ends with the command, so settings
that outlive a run (the CPU's denormal mode, train.flush_denormal=auto) are Kiln's to choose.
`kiln.train()` and `kiln.cli.main()` called from a user's Python leave such settings alone."""

from __future__ import annotations

_command = False


def mark_command() -> None:
    global _command
    _command = True


def is_command() -> bool:
    return _command
