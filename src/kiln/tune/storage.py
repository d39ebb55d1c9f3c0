"""Where a study lives (an Optuna RDB storage) and the lock that lets many workers share it.

SQLite (one file in the study's folder) by default; any SQLAlchemy URL (postgresql://,
mysql://) for workers on several machines. Workers take the study's lock only to count the trials
and open the next one, so that a study of N trials gets exactly N however many workers share it:
a file lock for SQLite (its workers share one machine), an advisory lock for PostgreSQL and MySQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

from kiln.errors import ConfigError, RunError, install_line
from kiln.secrets import mask

# A worker alive writes a heartbeat this often; a RUNNING trial silent for GRACE_S seconds is
# failed by the next worker that opens a trial (a worker on this machine that died is noticed at
# once by its process id, see kiln.tune.study).
HEARTBEAT_S = 10
GRACE_S = 60


def default_url(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite:/// URL (None for other databases or in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def check_url(url: str) -> str:
    """A clear error for a URL SQLAlchemy cannot read or whose driver is missing."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        if parsed.drivername == "postgresql" and _has("psycopg2") and not _has("psycopg"):
            # SQLAlchemy 2.1 reads postgresql:// as psycopg (3); Kiln's extra installs psycopg2
            parsed = parsed.set(drivername="postgresql+psycopg2")
            url = parsed.render_as_string(hide_password=False)
        parsed.get_dialect()
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"--storage '{redact(url)}': no database driver for it ({exc}){_hint(url)}"
        ) from None
    except ArgumentError:
        raise ConfigError(
            f"--storage '{redact(url)}' is not a database URL; write e.g. "
            "sqlite:///runs/study.db or postgresql://user:password@host:5432/dbname"
        ) from None
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return url


def _hint(url: str) -> str:
    return f" ({install_line('postgres')})" if url.startswith("postgres") else ""


def _has(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDBStorage with heartbeats (for trials of workers that vanish) and patient
    SQLite locking (several local workers write to one file)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if sqlite_path(url) is not None or url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 120}}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
    except ImportError as exc:
        raise ConfigError(
            f"--storage {redact(url)}: its database driver is not installed ({exc}){_hint(url)}"
        ) from None
    except (SQLAlchemyError, OSError) as exc:
        raise _unreachable(url, exc) from None


def _unreachable(url: str, exc: Exception) -> RunError:
    text = str(getattr(exc, "orig", None) or exc).strip()
    first = mask(text.splitlines()[0]) if text else type(exc).__name__
    return RunError(
        f"cannot open the study storage {redact(url)}: {first}\n"
        "Check that the database server is running and reachable, and that the database exists."
    )


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return mask(url)


class StudyLock:
    """A lock shared by every worker of a study: `acquire()`, `release()` (idempotent)."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.key = zlib.crc32(f"kiln-tune:{name}".encode()) - 2**31  # a signed 32-bit key
        self.backend = _backend(url)
        self._held: Any = None
        self._engine = None

    def acquire(self) -> None:
        if self._held is not None:
            return
        if self.backend == "file":
            path = sqlite_path(self.url).with_suffix(".lock")
            handle = open(path, "a+")  # noqa: SIM115 (held until release)
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held = handle
        elif self.backend in ("postgresql", "mysql"):
            from sqlalchemy import text

            conn = self._connection()
            if self.backend == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
            else:
                conn.execute(text("SELECT GET_LOCK(:n, 3600)"), {"n": f"kiln-tune-{self.key}"})
            self._held = conn
        else:
            self._held = True

    def release(self) -> None:
        held, self._held = self._held, None
        if held is None or held is True:
            return
        if self.backend == "file":
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()
            return
        from sqlalchemy import text

        with contextlib.suppress(Exception):  # a dropped connection has released it already
            if self.backend == "postgresql":
                held.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            else:
                held.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": f"kiln-tune-{self.key}"})
        held.close()

    @property
    def exact(self) -> bool:
        """Whether trials are counted under a real lock (else a race may add one or two)."""
        return self.backend != "none"

    def _connection(self):
        from sqlalchemy import create_engine
        from sqlalchemy.exc import SQLAlchemyError
        from sqlalchemy.pool import NullPool

        try:
            if self._engine is None:  # its own engine: closing the connection really closes it
                self._engine = create_engine(self.url, poolclass=NullPool)
            conn = self._engine.connect()
        except ImportError as exc:
            raise ConfigError(
                f"--storage {redact(self.url)}: its database driver is not installed ({exc})"
                f"{_hint(self.url)}"
            ) from None
        except SQLAlchemyError as exc:
            raise _unreachable(self.url, exc) from None
        conn.execution_options(isolation_level="AUTOCOMMIT")
        return conn

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _backend(url: str) -> str:
    from sqlalchemy.engine import make_url

    name = make_url(url).get_backend_name()
    if name == "sqlite":
        return "file" if sqlite_path(url) is not None else "none"
    if name in ("postgresql", "mysql", "mariadb"):
        return "postgresql" if name == "postgresql" else "mysql"
    return "none"


def worker_id() -> str:
    """host:pid of this process, recorded on each trial it runs."""
    return f"{os.uname().nodename}:{os.getpid()}"


def is_dead_here(worker: str | None) -> bool:
    """A worker of this machine whose process has gone (a killed `kiln tune`)."""
    if not worker or ":" not in worker:
        return False
    host, pid = worker.rsplit(":", 1)
    if host != os.uname().nodename or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
