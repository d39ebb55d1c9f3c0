"""Bad input through the real `kiln` command: one clear `error:` line, no traceback, no writes.

Each case runs `python -m kiln.cli ...` offline (KILN_OFFLINE=1, KILN_DATA an empty folder) in its
own working folder, whose whole tree (names, sizes, mtimes, bytes) is compared before and after.
Cases that need a run get a copy of the session's trained run at ./run. The commands are started
a few at a time by one module fixture (each spends seconds importing torch); the tests then check
the results one case at a time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import KilnPool, assert_clean_error, snapshot

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
GARBAGE = bytes(range(256)) * 64


# What each case puts in its working folder before the command runs -------------------------------


def notes_folder(work: Path) -> None:
    (work / "notes").mkdir()
    (work / "notes" / "todo.txt").write_text("nothing to see here\n")


def write_file(name: str, content: bytes | str) -> Callable[[Path], None]:
    def prepare(work: Path) -> None:
        data = content.encode() if isinstance(content, str) else content
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)

    return prepare


def good_png(work: Path) -> None:
    from PIL import Image

    Image.new("L", (8, 8), 128).save(work / "good.png")


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def prepare(work: Path) -> None:
        for step in steps:
            step(work)

    return prepare


def break_best(how: str) -> Callable[[Path], None]:
    """Damage checkpoints/best.pt of the run copy at work/run."""

    def prepare(work: Path) -> None:
        best = work / "run" / "checkpoints" / "best.pt"
        if how == "garbage":
            best.write_bytes(GARBAGE)
        elif how == "truncated":  # as after an interrupted copy
            data = best.read_bytes()
            best.write_bytes(data[: min(50_000, len(data) * 2 // 3)])
        elif how == "missing":
            best.unlink()
        good_png(work)

    return prepare


@dataclass
class Outcome:
    work: Path
    result: subprocess.CompletedProcess
    before: dict
    after: dict


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    needles: tuple[str, ...] = ()  # each must appear in the error; "{work}" is the working folder
    prepare: Callable[[Path], None] | None = None
    needs_run: bool = False  # copy the trained run to work/run first
    exit_code: int | None = None  # when the exact code matters (2 for config errors)
    check: Callable[[Outcome], None] | None = None  # anything more to assert


def listed_on_the_error_line(*names: str) -> Callable[[Outcome], None]:
    def check(o: Outcome) -> None:
        first = o.result.stderr.splitlines()[0]
        assert all(name in first for name in names), first

    return check


def each_file_listed_and_no_folder_created(o: Outcome) -> None:
    lines = o.result.stderr.splitlines()
    for name in MNIST_FILES:
        assert any(line.strip() == f"- {name}" for line in lines), o.result.stderr
    assert str(o.work / "kiln-data" / "MNIST" / "raw") in lines[0]
    assert not any((o.work / "kiln-data").iterdir()), "nothing may be created under KILN_DATA"


DATASETS = ("cifar10", "digits", "fashion-mnist", "mnist")
MODELS = ("cnn", "lenet", "mlp", "resnet18")

CASES = [
    # train: the config and the registries
    Case(
        "unknown-dataset",
        ("train", "data=imagenet"),
        ("data.name", "imagenet"),
        exit_code=2,
        check=listed_on_the_error_line(*DATASETS),
    ),
    Case(
        "unknown-model",
        ("train", "model=vit"),
        ("model.name", "vit"),
        exit_code=2,
        check=listed_on_the_error_line(*MODELS),
    ),
    Case(
        "unknown-optimizer",
        ("train", "optim.name=lion"),
        ("optim.name", "lion", "sgd, adam, adamw, rmsprop, adagrad"),
        exit_code=2,
    ),
    Case(
        "unknown-scheduler",
        ("train", "sched.name=linear"),
        ("sched.name", "linear", "none, step, cosine, onecycle"),
        exit_code=2,
    ),
    Case("negative-lr", ("train", "lr=-0.1"), ("optim.lr", "-0.1"), exit_code=2),
    Case("zero-epochs", ("train", "epochs=0"), ("train.epochs",), exit_code=2),
    Case("epochs-not-a-number", ("train", "epochs=abc"), ("train.epochs", "abc"), exit_code=2),
    Case(
        "unknown-key",
        ("train", "colour=red"),
        ("colour", "unknown key", "data, model, optim, sched, train, run"),
        exit_code=2,
    ),
    Case(
        "unknown-nested-key",
        ("train", "optim.lrr=1"),
        ("optim.lrr", "unknown key", "name, lr, momentum, nesterov, weight_decay, l1"),
        exit_code=2,
    ),
    Case("unknown-device", ("train", "device=tpu"), ("train.device", "tpu"), exit_code=2),
    Case("val-fraction", ("train", "data.val_fraction=1.5"), ("data.val_fraction",), exit_code=2),
    Case(
        "yaml-syntax",
        ("train", "broken.yaml", "epochs=1"),
        ("broken.yaml:3", "YAML"),
        write_file("broken.yaml", "data:\n  name: digits\n   batch_size: 3\n"),
        exit_code=2,
    ),
    Case(
        "yaml-list",
        ("train", "list.yaml"),
        ("list.yaml", "mapping"),
        write_file("list.yaml", "- data\n- model\n"),
        exit_code=2,
    ),
    Case("missing-config", ("train", "nope.yaml"), ("nope.yaml", "does not exist"), exit_code=2),
    Case("stray-argument", ("train", "epochs=1", "stray"), ("stray", "key=value")),
    Case("bad-device-suffix", ("train", "device=cpu:abc", "epochs=1"), ("train.device", "cpu:abc")),
    Case("mps-unavailable", ("train", "device=mps:0", "epochs=1"), ("mps",)),
    # train: data that is not there
    Case(
        "mnist-offline",
        ("train", "data=mnist", "epochs=1"),
        ("{work}/kiln-data/MNIST/raw", "KILN_OFFLINE", *MNIST_FILES),
        check=each_file_listed_and_no_folder_created,
    ),
    # folders that are not runs
    Case(
        "eval-not-a-run",
        ("eval", "notes"),
        ("notes", "not a Kiln run directory", "config.yaml"),
        notes_folder,
    ),
    Case(
        "eval-missing-path",
        ("eval", "runs/never-trained"),
        ("runs/never-trained", "does not exist"),
    ),
    Case(
        "resume-not-a-run",
        ("train", "--resume", "notes"),
        ("notes", "not a Kiln run directory"),
        notes_folder,
    ),
    Case(
        "resume-finished-run",
        ("train", "--resume", "run"),
        ("already finished", "2 epochs"),
        needs_run=True,
    ),
    # runs with a broken best checkpoint
    *[
        Case(
            f"{verb}-best-{how}",
            (verb, "run", *(["good.png"] if verb == "predict" else [])),
            ("run/checkpoints/best.pt", "corrupt" if how != "missing" else "no checkpoint"),
            break_best(how),
            needs_run=True,
        )
        for verb, how in [
            ("eval", "garbage"),
            ("eval", "missing"),
            ("predict", "garbage"),
            ("predict", "missing"),
            ("predict", "truncated"),
        ]
    ],
    # predict on files that are not images
    Case(
        "predict-text-as-png",
        ("predict", "run", "good.png", "x.png"),
        ("x.png", "cannot read image"),
        both(good_png, write_file("x.png", "this is a text file, not an image\n")),
        needs_run=True,
    ),
    Case(
        "predict-zero-byte-png",
        ("predict", "run", "good.png", "empty.png"),
        ("empty.png", "cannot read image"),
        both(good_png, write_file("empty.png", b"")),
        needs_run=True,
    ),
]

BUGS: dict[str, str] = {}  # case id -> known bug (strict xfail); none open


def param(case: Case):
    marks = [pytest.mark.xfail(reason=BUGS[case.id], strict=True)] if case.id in BUGS else []
    if case.id == "mps-unavailable":
        marks.append(pytest.mark.skipif(sys.platform == "darwin", reason="MPS may exist on macOS"))
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Outcome]:
    """Run every selected case (those not needing a run first, while the run trains)."""
    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if item.module is request.module
        and hasattr(item, "callspec")
        and "case" in item.callspec.params
    }
    cases = [c for c in CASES if c.id in selected]
    pool = KilnPool()
    prepared: dict[str, tuple[Path, dict]] = {}
    try:
        trained = None
        for case in sorted(cases, key=lambda c: c.needs_run):
            work = tmp_path_factory.mktemp(case.id)
            (work / "kiln-data").mkdir()
            if case.needs_run:
                trained = trained or request.getfixturevalue("trained_run")
                shutil.copytree(trained, work / "run")
            if case.prepare:
                case.prepare(work)
            prepared[case.id] = (work, snapshot(work))
            pool.submit(case.id, *case.args, cwd=work, data_dir=work / "kiln-data")
        out = {}
        for key, (work, before) in prepared.items():
            result = pool.result(key)
            out[key] = Outcome(work, result, before, snapshot(work))
        return out
    finally:
        pool.close()


@pytest.mark.parametrize("case", [param(c) for c in CASES])
def test_bad_input_is_one_clean_error_and_writes_nothing(case: Case, outcomes):
    o = outcomes[case.id]
    needles = [n.format(work=o.work) for n in case.needles]
    assert_clean_error(o.result, *needles)
    if case.exit_code is not None:
        assert o.result.returncode == case.exit_code, o.result.stderr
    assert not (o.work / "runs").exists(), "a runs/ folder was created"
    assert o.after == o.before, f"the command changed files\nstderr:\n{o.result.stderr}"
    assert o.result.stdout == "", "nothing should be printed to stdout before the error"
    if case.check:
        case.check(o)
