"""Shared fixtures: run the `kiln` CLI as a user would, and one small trained run to reuse."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

KILN = [sys.executable, "-m", "kiln.cli"]


def pytest_configure(config: pytest.Config) -> None:
    """Kiln's caches (decoded images, normalization stats) go to a folder of this session's own,
    inherited by the `kiln` processes it starts, never to the user's ~/.cache.

    `make test` runs the suite in one pytest-xdist worker per core (`-n auto`). Each worker
    takes its own share of the cores, and so do the `kiln` processes it starts (they inherit it):
    torch then runs one thread per core it owns, instead of every worker's threads contending
    for every core, which makes both many times slower."""
    if "KILN_CACHE" not in os.environ:
        os.environ["KILN_CACHE"] = folder = tempfile.mkdtemp(prefix="kiln-test-cache-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and count > 1 and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        index = int(worker.removeprefix("gw"))
        os.sched_setaffinity(0, cores[index::count] or [cores[index % len(cores)]])


def pool_workers() -> int:
    """Each `kiln` process spends seconds importing torch: a few at once keep the suite fast."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(4, (cores or 1) + 1)


def kiln_env(data_dir: Path) -> dict[str, str]:
    """Offline, with an empty data folder: nothing may be downloaded or found by accident."""
    env = dict(os.environ)
    env.update(KILN_OFFLINE="1", KILN_DATA=str(data_dir), COLUMNS="200", NO_COLOR="1")
    return env


def run_kiln(*args: str | Path, cwd: Path, data_dir: Path) -> subprocess.CompletedProcess:
    """`kiln ARGS...` in a subprocess; never raises on a non-zero exit."""
    return subprocess.run(
        [*KILN, *map(str, args)],
        cwd=cwd,
        env=kiln_env(data_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )


class KilnPool:
    """Start `kiln` commands in the background (a few at a time) and collect their results later:
    `pool.submit(key, *args, cwd=..., data_dir=...)`, then `pool.result(key)`."""

    def __init__(self, workers: int | None = None):
        self._executor = ThreadPoolExecutor(max_workers=workers or pool_workers())
        self._futures: dict[str, Future] = {}

    def submit(self, key: str, *args: str | Path, cwd: Path, data_dir: Path) -> None:
        self._futures[key] = self._executor.submit(run_kiln, *args, cwd=cwd, data_dir=data_dir)

    def result(self, key: str) -> subprocess.CompletedProcess:
        return self._futures[key].result()

    def keys(self) -> Iterable[str]:
        return self._futures.keys()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def interrupt_at(epoch: int, step: int):
    """A training callback that sends this process a real SIGINT at batch `step` of `epoch`, as
    Ctrl-C would (kiln.engine.callbacks is imported here, not when the suite starts)."""
    from kiln.engine.callbacks import Callback

    class InterruptAt(Callback):
        def on_batch_end(self, trainer, at_epoch: int, at_step: int) -> None:
            if (at_epoch, at_step) == (epoch, step):
                os.kill(os.getpid(), signal.SIGINT)

    return InterruptAt()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root with its size, mtime and content hash, to prove that a
    command wrote nothing (folders' mtimes change when anything is created or removed in them)."""
    state: dict[str, tuple] = {".": ("dir", root.stat().st_mtime_ns)}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = path.stat()
        if path.is_dir():
            state[rel] = ("dir", st.st_mtime_ns)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
    return state


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, stderr starts with exactly one `error: ...` line (details may follow on the
    next lines), no traceback, and the message names every needle. Returns the message."""
    err = result.stderr
    assert result.returncode != 0, f"exit code 0\nstdout:\n{result.stdout}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, f"nothing on stderr (exit {result.returncode})\nstdout:\n{result.stdout}"
    assert lines[0].startswith("error: "), err
    assert sum(line.lstrip().startswith("error:") for line in lines) == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in the error message:\n{err}"
    return err


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run `kiln` with cwd tmp_path, KILN_OFFLINE=1 and KILN_DATA an empty tmp_path/kiln-data."""
    data_dir = tmp_path / "kiln-data"
    data_dir.mkdir()

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        return run_kiln(*args, cwd=tmp_path, data_dir=data_dir)

    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run directory, trained once per session: digits (the default dataset) with a small
    mlp for 2 epochs, a few seconds. Tests must not modify it; those that do use `run_copy`."""
    work = tmp_path_factory.mktemp("trained")
    data_dir = work / "kiln-data"
    data_dir.mkdir()
    result = run_kiln(
        "train", "epochs=2", "model=mlp", "model.hidden=[64]", "lr=0.01", "device=cpu",
        f"run.dir={work / 'runs'}", "name=digits-run",
        cwd=work, data_dir=data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = work / "runs" / "digits-run"
    assert (run / "checkpoints" / "best.pt").is_file(), result.stdout
    return run


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run at tmp_path/run, free to corrupt."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))
