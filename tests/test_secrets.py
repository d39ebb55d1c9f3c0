"""A database password given to `kiln tune` reaches no file, no process's arguments and no
message: a study with two workers runs against a storage URL holding a password, then the run and
study folders and the process list are searched for it.

No database server is needed: a SQLAlchemy dialect registered by a `sitecustomize` module (every
`kiln` process of the test imports it) is SQLite that accepts and ignores a user and password.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import KILN, assert_clean_error, kiln_env

from kiln.errors import ConfigError
from kiln.secrets import expand, mask

PASSWORD = "Sup3r-s3cret-PW"
URL = f"sqlite+pwtest://kiln:{PASSWORD}@/study.db"  # relative: study.db in the test's folder

DIALECT = textwrap.dedent(
    """
    from sqlalchemy.dialects import registry
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

    class PasswordSQLite(SQLiteDialect_pysqlite):
        supports_statement_cache = True

        def create_connect_args(self, url):
            return super().create_connect_args(url._replace(username=None, password=None))

    registry.register("sqlite.pwtest", __name__, "PasswordSQLite")
    """
)
CONFIG = {
    "data": {"name": "digits", "subset": 256},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"epochs": 2, "device": "cpu"},
    "run": {"report": False},
    "tune": {"space": {"optim.lr": {"log_uniform": [1e-3, 1e-1]}}, "pruner": "none"},
}


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(DIALECT)
    (tmp_path / "kiln-data").mkdir(exist_ok=True)
    env = kiln_env(tmp_path / "kiln-data")
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def files_holding(folder: Path, secret: str) -> list[str]:
    return [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and secret.encode() in p.read_bytes()
    ]


def processes_showing(secret: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if secret in line and "ps -eo" not in line]


def test_a_password_in_the_storage_url_stays_out_of_files_argv_and_messages(tmp_path):
    """The URL comes from $KILN_STORAGE (as the help advises); two workers share the study."""
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = environment(tmp_path, KILN_STORAGE=URL)
    args = [*KILN, "tune", str(config), "--trials", "2", "--workers", "2", "--study", "pw"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen: list[str] = []
    while proc.poll() is None:  # every process of the study, while it runs
        seen += processes_showing(PASSWORD)
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stdout + stderr
    assert (tmp_path / "study.db").is_file()  # the study really went to that storage
    assert seen == []
    assert PASSWORD not in stdout + stderr
    assert "kiln:***@" in stdout  # the storage is named, with its password hidden
    assert files_holding(tmp_path / "runs", PASSWORD) == []
    trials = sorted((tmp_path / "runs" / "pw").glob("trial-*"))
    assert len(trials) == 2


def test_a_storage_flag_is_masked_in_each_trials_recorded_command(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    done = subprocess.run(
        [*KILN, "tune", str(config), "--trials", "1", "--storage", URL, "--study", "flag"],
        cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    assert files_holding(tmp_path / "runs", PASSWORD) == []
    info = (tmp_path / "runs" / "flag" / "trial-0000" / "info.json").read_text()
    assert "--storage sqlite+pwtest://kiln:***@/study.db" in info


def test_a_password_written_in_yaml_is_refused_naming_the_variable(tmp_path):
    tree = {**CONFIG, "tune": {**CONFIG["tune"], "storage": URL}}
    (tmp_path / "leaky.yaml").write_text(yaml.safe_dump(tree))
    done = subprocess.run([*KILN, "tune", "leaky.yaml"], cwd=tmp_path, env=environment(tmp_path),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    message = assert_clean_error(done, "tune.storage", "${KILN_STORAGE}", "kiln:***@")
    assert PASSWORD not in message + done.stdout
    assert not (tmp_path / "runs").exists()


def test_a_variable_in_yaml_is_expanded_where_used_and_recorded_as_written(tmp_path):
    tree = {**CONFIG, "tune": {**CONFIG["tune"], "storage": "sqlite+pwtest://kiln:${DB_PW}@/s.db"}}
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(tree))
    done = subprocess.run(
        [*KILN, "tune", "env.yaml", "--trials", "1", "--study", "env"], cwd=tmp_path,
        env=environment(tmp_path, DB_PW=PASSWORD), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s.db").is_file()
    assert files_holding(tmp_path / "runs", PASSWORD) == []
    saved = yaml.safe_load((tmp_path / "runs" / "env" / "trial-0000" / "config.yaml").read_text())
    assert saved["tune"]["storage"] == "sqlite+pwtest://kiln:${DB_PW}@/s.db"


def test_an_unset_variable_is_named():
    with pytest.raises(ConfigError, match=r"\$\{NOT_SET_ANYWHERE\}.*export NOT_SET_ANYWHERE"):
        expand("postgresql://u:${NOT_SET_ANYWHERE}@db/x")


def test_mask_hides_every_password_and_nothing_else():
    line = "kiln tune a.yaml --storage postgresql://me:p@ss:w0rd@db:5432/k --trials 3"
    assert mask(line) == "kiln tune a.yaml --storage postgresql://me:***@db:5432/k --trials 3"
    for plain in ("sqlite:///runs/s.db", "postgresql://me@db/k", "lr=3e-3 data.root=/a:b"):
        assert mask(plain) == plain


def test_the_resume_hint_masks_the_password(monkeypatch):
    from kiln.tune.worker import command_line

    monkeypatch.setattr(sys, "argv", ["kiln", "tune", "--storage", URL])
    assert PASSWORD not in command_line() and "kiln:***@" in command_line()
