"""No code runs from data by default: a run folder (or an export's sidecar) whose `imports:` names
a module is refused with the modules it wants and how to allow them; the module's code runs only
with --trust-imports (or trust_imports=True), and a config the user wrote keeps importing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import assert_clean_error
from PIL import Image

import kiln
from kiln.errors import RunError

EVIL = """
from pathlib import Path
Path("ran.txt").write_text("the module's code ran")
"""


@pytest.fixture
def planted(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of a run whose config.yaml names a module sitting in the current folder."""
    run = Path(shutil.copytree(trained_run, tmp_path / "someone-elses-run"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["imports"] = ["planted_module"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "planted_module.py").write_text(EVIL)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "digit.png")
    return run


@pytest.mark.parametrize(
    "verb",
    [
        ("predict", "{run}", "digit.png"),
        ("eval", "{run}"),
        ("report", "{run}"),
        ("summary", "{run}"),
        ("export", "{run}", "-o", "out/"),
        ("train", "--resume", "{run}", "epochs=3"),
    ],
    ids=lambda v: v[0],
)
def test_a_run_folder_that_imports_code_is_refused(cli, planted: Path, tmp_path: Path, verb):
    args = [a.format(run=planted) for a in verb]
    result = cli(*args)
    assert_clean_error(result, "planted_module", "--trust-imports", "config.yaml")
    assert not (tmp_path / "ran.txt").exists()


def test_trust_imports_runs_it(cli, planted: Path, tmp_path: Path):
    result = cli("predict", planted, "digit.png", "--trust-imports")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ran.txt").is_file()


def test_python_needs_trust_imports_too(planted: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # even where Python itself would find it
    with pytest.raises(RunError, match="planted_module.*trust_imports=True"):
        kiln.load(planted)
    assert not (tmp_path / "ran.txt").exists()
    with kiln.trust_imports():
        kiln.load(planted)
    assert (tmp_path / "ran.txt").is_file()


def test_an_export_sidecar_that_imports_code_is_refused(cli, trained_run: Path, tmp_path: Path):
    exported = cli("export", trained_run, "--format", "state_dict", "-o", "model.state_dict.pt")
    assert exported.returncode == 0, exported.stderr
    sidecar = tmp_path / "model.state_dict.pt.json"
    spec = json.loads(sidecar.read_text())
    spec["config"]["imports"] = ["planted_module"]
    sidecar.write_text(json.dumps(spec))
    (tmp_path / "planted_module.py").write_text(EVIL)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "digit.png")
    result = cli("predict", "model.state_dict.pt", "digit.png")
    assert_clean_error(result, "planted_module", "--trust-imports", "model.state_dict.pt.json")
    assert not (tmp_path / "ran.txt").exists()
