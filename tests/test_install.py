"""The wheel, installed as a user would: built from this checkout, installed with its base
dependencies only (no extras) into a fresh virtual environment, and `kiln train epochs=1` run
there; the verbs of the extras answer with one line naming the extra.

torch and torchvision (a CUDA build: gigabytes) are not copied into the new environment: the
packages of their own requirement closure (torch, torchvision, the nvidia-* libraries, numpy,
pillow, sympy, ...) are linked from this interpreter's site-packages through a .pth file, one
folder holding those packages alone. Everything else the wheel declares is installed by pip, with
constraints.txt, into the new environment, and nothing else is visible there: a base dependency
missing from pyproject.toml fails the test, and so does an extra's library that the base install
imports.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("torch", "torchvision")  # taken from this interpreter, with what they require

pytestmark = [pytest.mark.install, pytest.mark.slow, pytest.mark.timeout(900)]


def closure(names: tuple[str, ...]) -> list[md.Distribution]:
    """The installed distributions `names` need, themselves included (markers evaluated, and
    the extras each requirement asks for, e.g. torch's cuda-toolkit[cublas,...])."""
    env = default_environment()
    seen: dict[str, md.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(name, "") for name in names]
    while todo:
        name, extra = todo.pop()
        key = name.lower().replace("_", "-")
        if (key, extra) in done:
            continue
        done.add((key, extra))
        try:
            dist = seen.get(key) or md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional requirement that is not installed
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
                todo += [(req.name, wanted) for wanted in ("", *req.extras)]
    return list(seen.values())


def link_packages(dists: list[md.Distribution], folder: Path) -> None:
    """Symlinks to each distribution's top-level files and folders (and its .dist-info)."""
    folder.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for dist in dists:
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = site / top
            if source.exists() and not (folder / top).exists() and top != "__pycache__":
                (folder / top).symlink_to(source)


def clean_env() -> dict[str, str]:
    """This environment without what points Python at the checkout or at this venv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", clean_env())
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run([str(a) for a in args], **kwargs)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("install")
    source = work / "source"  # a copy: building writes build/ and *.egg-info beside the code
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "-w", work / "dist", source)  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("kiln_workbench-*.whl")

    env = work / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", env)  # this pip installs into it
    assert made.returncode == 0, made.stderr
    python = env / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    link_packages(closure(LINKED), work / "linked")
    (Path(site.stdout.strip()) / "linked_torch.pth").write_text(f"{work / 'linked'}\n")

    # --no-compile: Python compiles on first import; compiling scipy and matplotlib here would
    # double the install's time.
    installed = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-compile",
                    "--disable-pip-version-check", "-q", "-c", ROOT / "constraints.txt",
                    wheel)  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return env


MISSING = {  # a verb of each extra, and the extra it needs
    "serve": ["serve", "runs/none"],
    "export": ["export", "runs/none"],
    "tune": ["tune"],
    "trackers": ["train", "run.loggers=[mlflow]"],
    "timm": ["train", "model=timm:resnet10t"],
}


def kiln(venv: Path, cwd: Path, *args) -> subprocess.CompletedProcess:
    env = clean_env()
    env.update(KILN_OFFLINE="1", KILN_DATA=str(cwd / "data"), NO_COLOR="1", COLUMNS="200")
    return run(venv / "bin" / "kiln", *args, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def outcomes(venv, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """`kiln train epochs=1` and one verb of each extra, in the new environment, run together
    (each spends seconds importing torch)."""
    commands = {"train": ["train", "epochs=1", "model=mlp", "model.hidden=[32]"], **MISSING}
    folders = {key: tmp_path_factory.mktemp(key) for key in commands}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {k: pool.submit(kiln, venv, folders[k], *args) for k, args in commands.items()}
        return {key: (folders[key], future.result()) for key, future in futures.items()}


def test_the_distribution_is_kiln_workbench_and_installs_the_kiln_command(venv):
    shown = run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "show",
                "kiln-workbench")  # fmt: skip
    assert "Name: kiln-workbench" in shown.stdout, shown.stdout + shown.stderr
    assert (venv / "bin" / "kiln").is_file()
    where = run(venv / "bin" / "python", "-c", "import kiln; print(kiln.__file__)")
    assert str(venv) in where.stdout, "kiln must come from the wheel, not from this checkout"


def test_the_base_install_has_none_of_the_extras(venv):
    modules = ["fastapi", "uvicorn", "onnx", "onnxruntime", "optuna", "tensorboard", "mlflow",
               "wandb", "timm"]  # fmt: skip
    code = f"import importlib.util as u; print([m for m in {modules!r} if u.find_spec(m)])"
    found = run(venv / "bin" / "python", "-c", code)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr


def test_a_base_install_trains_evaluates_and_reports(outcomes):
    work, result = outcomes["train"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test acc" in result.stdout and "Report:" in result.stdout
    run_dir = work / "runs" / "digits-mlp"
    assert (run_dir / "report.html").is_file() and (run_dir / "eval-test.json").is_file()
    assert not (run_dir / "tb").exists()  # TensorBoard is an extra: not installed, not used


@pytest.mark.parametrize("extra", list(MISSING))
def test_a_missing_extra_is_one_line_naming_it(outcomes, extra):
    work, result = outcomes[extra]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"'{extra}' extra" in lines[0] and f"pip install -e '.[{extra}]'" in lines[0]
    assert not (work / "runs").exists()
