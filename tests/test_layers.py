"""The structure holds: imports point down the layers (import-linter's contract in pyproject.toml),
no cycle between kiln's first-level packages, and no code outside kiln/tasks/ asks which task it
is (a task-name comparison, or a hasattr/getattr probe of a task)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "kiln"
BUILT_IN = {"classify", "regress", "segment", "vae", "gan", "multilabel", "binary"}


def test_import_linter_contract_is_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_no_cycle_between_first_level_packages():
    pytest.importorskip("grimp")
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from import_graph import cycles, first_level_graph
    finally:
        sys.path.pop(0)
    edges = first_level_graph()
    assert {"tasks", "engine", "infer", "deploy", "evaluate", "data"} <= set(edges)
    assert cycles(edges) == []
    assert "tasks" not in edges["evaluate"] and "engine" not in edges["tasks"]


def mentions_task(node: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and "task" in n.id.lower())
        or (isinstance(n, ast.Attribute) and "task" in n.attr.lower())
        for n in ast.walk(node)
    )


def task_questions(path: Path, root: Path = SRC) -> list[str]:
    """Comparisons with a built-in task's name, and hasattr/getattr on anything called task."""
    where = path.relative_to(root)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            names = {
                n.value
                for n in ast.walk(node)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            }
            if names & BUILT_IN or (mentions_task(node) and names):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr")
            and node.args
            and mentions_task(node.args[0])
        ):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_code_outside_the_tasks_asks_which_task_it_is():
    outside = [p for p in SRC.rglob("*.py") if "tasks" not in p.relative_to(SRC).parts]
    assert len(outside) > 50
    found = [line for path in outside for line in task_questions(path)]
    assert found == [], "\n".join(found)


def test_the_check_finds_what_it_looks_for(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f(cfg, task):\n"
        "    if cfg.task == 'gan':\n        pass\n"
        "    if hasattr(task, 'evaluate'):\n        pass\n"
        "    return getattr(self.task, 'epoch_images', None)\n"
    )
    found = task_questions(probe, tmp_path)
    assert len(found) == 3, found
