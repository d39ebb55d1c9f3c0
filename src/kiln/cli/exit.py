"""Ending the `kiln` process quickly once its work is done.

A finished `kiln train` has imported torch, its compiler stack, NumPy, Pillow, matplotlib and
more: Python's own exit then spends the better part of a second unloading thousands of modules
and freeing their objects one by one (measured in benchmarks/README.md), after every result is
already on disk. `exit_now` skips that teardown and nothing else: the exit handlers that
libraries registered with atexit still run first (they stop worker processes, remove temporary
folders, flush logs), the standard streams are flushed, and `os._exit` ends the process with the
command's exit code. Only the `kiln` command does this, never `kiln.cli.main()` called from Python,
and not while another (non-daemon) thread still runs: then the normal exit waits for it.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(t.is_alive() and not t.daemon for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()  # what Python's exit would run: registered handlers, newest first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)
