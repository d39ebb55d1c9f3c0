"""`kiln tune`: the search space, a study end to end (best.yaml, trials.csv, report), pruning,
resuming (after --trials 2, and after a worker was killed mid-trial), several workers on SQLite and
on a real PostgreSQL server, and the learning-rate range test.

The `kiln` processes of the module start together (each spends seconds importing torch); every
trial is a tiny mlp on scikit-learn's bundled digits for two epochs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import KILN, assert_clean_error, kiln_env, run_kiln, snapshot

from kiln.errors import ConfigError
from kiln.tune.space import check_space, parse_space
from kiln.tune.storage import check_url

TINY = {
    "data": {"name": "digits", "subset": 512},
    "model": {"name": "mlp", "hidden": [16]},
    "train": {"epochs": 2, "device": "cpu"},
    "run": {"report": False},
}
SPACE = {
    "optim.lr": {"log_uniform": [1.0e-3, 1.0e-1]},
    "model.dropout": {"uniform": [0.0, 0.3]},
    "optim.name": {"choice": ["sgd", "adam"]},
}


def write_config(folder: Path, name: str, tune: dict, **sections: dict) -> Path:
    tree = json.loads(json.dumps(TINY))
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    tree["tune"] = tune
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def load_study(folder: Path, name: str, storage: str | None = None):
    import optuna

    url = storage or f"sqlite:///{folder / 'runs' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=url)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def trial_dirs(study_folder: Path) -> list[str]:
    return sorted(p.name for p in study_folder.glob("trial-*"))


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# The search space, in process --------------------------------------------------------------------


def test_space_parses_every_kind_and_the_aliases():
    params = {
        p.key: p
        for p in parse_space(
            {
                "lr": {"log_uniform": [1e-4, 1e-1]},
                "model.dropout": {"uniform": [0, 0.5]},
                "data.batch_size": {"int": [16, 128], "log": True},
                "model.depth": {"int_uniform": [1, 3]},
                "model.hidden": {"choice": [[64], [128, 64]]},
            }
        )
    }
    assert set(params) == {
        "optim.lr", "model.dropout", "data.batch_size", "model.depth", "model.hidden",
    }  # fmt: skip
    assert (params["optim.lr"].kind, params["optim.lr"].log) == ("float", True)
    assert (params["model.dropout"].low, params["model.dropout"].high) == (0.0, 0.5)
    assert (params["data.batch_size"].kind, params["data.batch_size"].log) == ("int", True)
    assert params["model.hidden"].choices == ([64], [128, 64])


@pytest.mark.parametrize(
    ("space", "needles"),
    [
        ({}, ["tune.space is empty", "log_uniform"]),
        ({"optim.lr": {"loguniform": [1e-4, 1e-1]}}, ["tune.space.optim.lr", "'loguniform'"]),
        ({"optim.lr": [1e-4, 1e-1]}, ["tune.space.optim.lr", "expected one distribution"]),
        ({"optim.lr": {"uniform": [0.1, 0.01]}}, ["tune.space.optim.lr", "low < high"]),
        ({"optim.lr": {"log_uniform": [0, 0.1]}}, ["tune.space.optim.lr", "positive lower"]),
        ({"data.batch_size": {"int": [16.5, 64]}}, ["tune.space.data.batch_size", "integers"]),
        ({"optim.name": {"choice": []}}, ["tune.space.optim.name", "non-empty list"]),
        ({"optim.name": {"choice": ["sgd", "sgd"]}}, ["tune.space.optim.name", "twice"]),
        (
            {"lr": {"uniform": [0.1, 0.2]}, "optim.lr": {"uniform": [0.1, 0.2]}},
            ["'lr' and 'optim.lr'"],
        ),
    ],
)
def test_space_errors_name_the_key_and_say_what_to_write(space, needles):
    with pytest.raises(ConfigError) as info:
        parse_space(space)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("space", "needles"),
    [
        ({"optim.lrr": {"uniform": [0.1, 0.2]}}, ["tune.space.optim.lrr: not a key", "lr,"]),
        ({"model.dropoutt": {"uniform": [0.0, 0.5]}}, ["model.dropoutt: not a key", "no option"]),
        ({"optim.name": {"choice": ["sgd", "adamx"]}}, ["tune.space.optim.name", "'adamx'"]),
        ({"data.batch_size": {"uniform": [16, 128]}}, ["tune.space.data.batch_size", "integer"]),
        ({"optim.momentum": {"uniform": [0.5, 1.5]}}, ["tune.space.optim.momentum", "1.5"]),
    ],
)
def test_space_keys_and_values_are_checked_against_the_config(space, needles):
    with pytest.raises(ConfigError) as info:
        check_space(json.loads(json.dumps(TINY)), parse_space(space))
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_warmup_epochs_are_never_pruned():
    import optuna

    from kiln.config import build_config
    from kiln.tune.study import make_pruner, make_settings

    cfg = build_config(
        {**TINY, "tune": {"space": SPACE, "pruner": "median", "startup_trials": 1,
                          "warmup_epochs": 1}}
    )  # fmt: skip
    study = optuna.create_study(direction="maximize", pruner=make_pruner(make_settings(cfg)))
    for good in (0.9, 0.95):
        study.add_trial(
            optuna.trial.create_trial(
                value=good, intermediate_values={1: good, 2: good, 3: good}, params={},
                distributions={},
            )
        )  # fmt: skip
    trial = study.ask()
    trial.report(0.1, 1)
    assert not trial.should_prune()  # epoch 1 is the warm-up
    trial.report(0.1, 2)
    assert trial.should_prune()


# Studies, started together -----------------------------------------------------------------------


def kiln_here(*args: str | Path, cwd: Path, data_dir: Path) -> subprocess.CompletedProcess:
    """`kiln ARGS...` in this process (torch is imported already: seconds saved per command),
    with the environment and working directory a subprocess of run_kiln would have."""
    from kiln.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in kiln_env(data_dir).items():
            mp.setenv(key, value)
        mp.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict:
    """Every study of the module: the two-worker one in subprocesses, started first; the others
    in this process meanwhile. Each entry is a list of finished commands."""
    work = tmp_path_factory.mktemp("tune")
    data_dir = work / "kiln-data"
    data_dir.mkdir()
    out: dict = {"work": work}
    main = write_config(work, "main", {"space": SPACE, "seed": 3, "startup_trials": 2})
    prune = write_config(
        work, "prune",
        {"space": {"optim.lr": {"choice": [1.0e-6, 0.05]}}, "sampler": "random", "seed": 0,
         "pruner": "median", "startup_trials": 1},
        optim={"name": "sgd"},
    )  # fmt: skip
    pair = write_config(work, "pair", {"space": SPACE, "pruner": "none"})
    failing = write_config(
        work, "failing",
        {"space": {"train.precision": {"choice": ["fp32", "fp16"]},
                   "model.dropout": {"choice": [0.1, 1.5]}},
         "sampler": "random", "seed": 5, "pruner": "none"},
        train={"epochs": 1},
    )  # fmt: skip
    bad = write_config(
        work, "bad", {"space": {**SPACE, "optim.lrr": {"log_uniform": [1e-4, 1e-1]}}}
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        pair_run = pool.submit(
            run_kiln, "tune", pair, "--trials", "4", "--workers", "2", cwd=work, data_dir=data_dir
        )

        def here(*args):
            return kiln_here(*args, cwd=work, data_dir=data_dir)

        # --trials 2, then the same command with --trials 4 continues it; then train best.yaml
        out["main"] = [here("tune", main, "--trials", "2")]
        out["main"].append(here("tune", main, "--trials", "4"))
        out["main"].append(here("train", "runs/main/best.yaml", "run.dir=best-runs"))
        out["prune"] = [here("tune", prune, "--trials", "6")]
        out["bad"] = [here("tune", bad, "--trials", "2")]
        out["failing"] = [here("tune", failing, "--trials", "5")]
        # from a trained run's weights (a trial of the main study), which it must not touch
        trained = work / "runs" / "main" / "trial-0000"
        out["trained"], out["before_lr_find"] = trained, snapshot(trained)
        lr_args = ["--lr-find", "model=mlp", "model.hidden=[16]", f"model.weights={trained}"]
        out["lr_find"] = [here("tune", *lr_args, "device=cpu", "--steps", "40", "-o", "lrfind")]
        out["pair"] = [pair_run.result()]
    return out


def test_a_study_writes_best_yaml_trials_csv_and_a_report(studies):
    first, second, train = studies["main"]
    work = studies["work"]
    ok(first)
    out = ok(second)
    folder = work / "runs" / "main"
    assert "Best: trial" in out and "best.yaml" in out, out
    study = load_study(work, "main")
    assert len(study.trials) == 4
    assert all(s in ("COMPLETE", "PRUNED") for s in states(study)), states(study)
    assert trial_dirs(folder) == [f"trial-{n:04d}" for n in range(4)]
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3]
    assert {"state", "val_acc", "optim.lr", "model.dropout", "optim.name", "run"} <= set(rows[0])
    for row in rows:
        assert 1e-3 <= float(row["optim.lr"]) <= 1e-1
        assert row["optim.name"] in ("sgd", "adam")
        assert (work / row["run"] / "config.yaml").is_file()
    best = yaml.safe_load((folder / "best.yaml").read_text())
    winner = study.best_trial
    assert best["optim"]["lr"] == pytest.approx(winner.params["optim.lr"])
    assert best["optim"]["name"] == winner.params["optim.name"]
    assert best["model"]["dropout"] == pytest.approx(winner.params["model.dropout"])
    assert best["model"]["hidden"] == [16] and "tune" not in best
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert 'alt="history"' in html and 'alt="importance"' in html
    assert "http://" not in html and "https://" not in html  # self-contained
    for name in ("history", "importance"):
        assert (folder / "plots" / f"{name}.png").stat().st_size > 5_000
    # kiln train best.yaml trains the winning config as a normal run
    ok(train)
    trained = yaml.safe_load((work / "best-runs" / "main-best" / "config.yaml").read_text())
    assert trained["optim"]["lr"] == pytest.approx(winner.params["optim.lr"])
    assert (work / "best-runs" / "main-best" / "checkpoints" / "best.pt").is_file()


def test_resuming_runs_only_the_missing_trials(studies):
    first, second = studies["main"][:2]
    assert first.stdout.count(" started: ") == 2, first.stdout
    assert second.stdout.count(" started: ") == 2, second.stdout
    assert "Trial 2 started" in second.stdout and "Trial 0 started" not in second.stdout


def test_the_pruner_stops_bad_trials_after_an_epoch(studies):
    out = ok(studies["prune"][0])
    study = load_study(studies["work"], "prune")
    assert len(study.trials) == 6
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, f"nothing pruned: {states(study)}\n{out}"
    for t in pruned:
        assert t.params["optim.lr"] == 1e-6  # only the hopeless learning rate
        assert t.last_step == 1  # stopped after its first epoch of two
    assert " pruned after epoch 1" in out


def test_two_workers_share_one_sqlite_study_exactly(studies):
    out = ok(studies["pair"][0])
    study = load_study(studies["work"], "pair")
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == [0, 1, 2, 3], numbers
    assert set(states(study)) == {"COMPLETE"}
    assert trial_dirs(studies["work"] / "runs" / "pair") == [f"trial-{n:04d}" for n in range(4)]
    assert out.count(" started: ") == 4, out  # each trial ran once, in one of the workers
    assert "Best config:" in out  # the parent wrote the report once both were done
    assert (studies["work"] / "runs" / "pair" / "report.html").is_file()


def test_a_trial_that_fails_is_recorded_and_the_study_goes_on(studies):
    out = ok(studies["failing"][0])
    study = load_study(studies["work"], "failing")
    assert len(study.trials) == 5
    for t in study.trials:
        if t.params["train.precision"] == "fp16":  # a ConfigError when training starts
            assert t.state.name == "FAIL"
            assert "train.precision=fp16 needs a GPU" in t.user_attrs["error"]
        elif t.params["model.dropout"] == 1.5:  # refused when the model is built
            assert t.state.name == "FAIL"
            assert "dropout" in t.user_attrs["error"], t.user_attrs["error"]
        else:
            assert t.state.name == "COMPLETE", t.user_attrs
    assert states(study).count("FAIL") == 3, states(study)  # seed 5 draws both kinds of failure
    assert f"Trial {study.trials[-1].number} " in out  # ran to the end
    rows = list(csv.DictReader((studies["work"] / "runs" / "failing" / "trials.csv").open()))
    failed = [r for r in rows if r["state"] == "failed"]
    assert failed and all(r["note"] for r in failed)


def test_a_typo_in_the_space_fails_before_any_trial(studies):
    assert_clean_error(studies["bad"][0], "tune.space.optim.lrr", "unknown key")
    assert not (studies["work"] / "runs" / "bad").exists()


def test_lr_find_plots_and_suggests_without_touching_the_run(studies):
    out = ok(studies["lr_find"][0])
    folder = studies["work"] / "lrfind"
    assert (folder / "lr_find.png").stat().st_size > 5_000
    summary = json.loads((folder / "lr_find.json").read_text())
    rows = list(csv.DictReader((folder / "lr_find.csv").open()))
    lrs = [float(r["lr"]) for r in rows]
    assert 10 <= len(rows) <= 40 and lrs == sorted(lrs)
    assert math.isfinite(summary["suggestion"]) and lrs[0] <= summary["suggestion"] <= lrs[-1]
    assert f"optim.lr={summary['suggestion']:.2g}" in out, out
    assert "Suggested lr" in out and "kiln train" in out
    assert snapshot(studies["trained"]) == studies["before_lr_find"]  # weights read, not written


# A worker killed mid-trial -----------------------------------------------------------------------


def test_a_study_whose_worker_was_killed_resumes_to_n_trials(tmp_path):
    data_dir = tmp_path / "kiln-data"
    data_dir.mkdir()
    config = write_config(
        tmp_path, "killed", {"space": SPACE, "pruner": "none"},
        train={"epochs": 15}, data={"subset": 256},
    )  # fmt: skip
    args = [*KILN, "tune", str(config), "--trials", "2"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=kiln_env(data_dir), stdout=subprocess.PIPE, text=True
    )
    progress = tmp_path / "runs" / "killed" / "trial-0000" / "metrics.csv"
    deadline = time.monotonic() + 240
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # trial 0 has finished one epoch of its 15
    proc.communicate()
    assert progress.exists(), "trial 0 never started"
    study = load_study(tmp_path, "killed")
    assert states(study) == ["RUNNING"]

    rerun = kiln_here("tune", config, "--trials", "2", cwd=tmp_path, data_dir=data_dir)
    out = ok(rerun)
    assert "Trial 0: its worker is gone" in out, out
    study = load_study(tmp_path, "killed")
    assert states(study) == ["FAIL", "COMPLETE", "COMPLETE"]  # two trials, the lost one aside
    assert "abandoned" in study.trials[0].user_attrs
    rows = list(csv.DictReader((tmp_path / "runs" / "killed" / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["abandoned", "complete", "complete"]
    assert (tmp_path / "runs" / "killed" / "best.yaml").is_file()


# PostgreSQL --------------------------------------------------------------------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres() -> str:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (a free port; its socket in its own folder),
    with a database `kiln`; yields the SQLAlchemy URL and stops and removes it afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2 not installed (pip install 'kiln[postgres]')")
    bins = {name: _pg_bin(name) for name in ("initdb", "pg_ctl", "postgres")}
    missing = [name for name, path in bins.items() if path is None]
    if missing:
        pytest.skip(f"PostgreSQL not installed ({', '.join(missing)} not found; apt-get install "
                    "postgresql)")  # fmt: skip
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:  # initdb refuses root: run the server as the `postgres` user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no `postgres` user to run the server as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and no runuser to start the server as `postgres`")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout}\n{done.stderr}"

    started = False
    try:
        run(bins["initdb"], "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -F"
        run(bins["pg_ctl"], "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
            "start")  # fmt: skip
        started = True
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE kiln")
        conn.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/kiln"
    finally:
        if started:
            run(bins["pg_ctl"], "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgres_study(postgres, tmp_path):
    data_dir = tmp_path / "kiln-data"
    data_dir.mkdir()
    config = write_config(tmp_path, "pg", {"space": SPACE, "pruner": "none"})
    args = [*KILN, "tune", str(config), "--trials", "4", "--storage", postgres, "--study", "pg"]
    env = kiln_env(data_dir)
    procs = [
        subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, f"{stdout}\n{stderr}"
    study = load_study(tmp_path, "pg", storage=check_url(postgres))  # the driver installed
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert set(states(study)) == {"COMPLETE"}
    runs = [t.user_attrs["run"] for t in study.trials]
    assert sorted(runs) == [f"runs/pg/trial-{n:04d}" for n in range(4)]
    assert trial_dirs(tmp_path / "runs" / "pg") == [f"trial-{n:04d}" for n in range(4)]
    started = [line for out, _ in results for line in out.splitlines() if " started: " in line]
    assert len(started) == 4, started  # each trial ran once, in one of the two processes
