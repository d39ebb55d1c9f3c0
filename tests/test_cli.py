"""The `kiln` command on good input: help, list, config show, eval --json and predict.

The slow commands (each imports torch) are started together by one module fixture; eval and
predict use the session's trained digits run (eval on a copy, since it writes eval-test.json).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import KilnPool, snapshot
from PIL import Image

from kiln.config import RunConfig

VERBS = (
    ["train"], ["config"], ["config", "show"], ["list"], ["summary"], ["data"], ["data", "show"],
    ["data", "stats"], ["data", "make"], ["eval"], ["report"], ["compare"], ["predict"],
    ["sample"], ["export"], ["serve"], ["prune"], ["compress"], ["tune"], ["completion"],
)  # fmt: skip
LEAVES = [v for v in VERBS if v not in (["config"], ["data"])]  # the verbs that run something
POSITIONALS = {  # what each verb needs before a flag is looked at
    "list": ["models"], "summary": ["mlp"], "data make": ["mnist-seg"], "eval": ["run"],
    "report": ["run"], "compare": ["a", "b"], "predict": ["run", "x.png"], "sample": ["run"],
    "export": ["run"], "serve": ["run"], "completion": ["bash"],
    "prune": ["run", "--sparsity", "0.5"], "compress": ["run"],
}  # fmt: skip
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
MODELS = ("mlp", "lenet", "cnn", "resnet18")
EVAL_KEYS = (
    "accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "per_class",
    "confusion_matrix",
)  # fmt: skip
DIGITS_TEST_SIZE = 360  # the fixed, stratified 20% of scikit-learn's 1,797 digits


@functools.cache
def digits_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)


def digit_image(index: int) -> Image.Image:
    """A real 8x8 digit from scikit-learn, as an 8-bit grayscale ("L") image."""
    image = Image.fromarray(digits_images()[index])
    assert image.mode == "L"
    return image


@pytest.fixture(scope="module")
def outputs(request, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("cli")
    data_dir = work / "kiln-data"
    data_dir.mkdir()
    pool = KilnPool()
    try:

        def submit(key: str, *args: str | Path) -> None:
            pool.submit(key, *args, cwd=work, data_dir=data_dir)

        submit("list-datasets", "list", "datasets")
        submit("list-models", "list", "models")
        submit("config-show", "config", "show", "epochs=3", "model=mlp", "model.hidden=[32]")
        submit("quiet-train", "train", "-q", "epochs=1", "model=mlp", "model.hidden=[8]",
               "run.report=false")  # fmt: skip
        submit("data-stats-alias", "data", "stats", "data=digits", "--json")

        trained = request.getfixturevalue("trained_run")
        run = Path(shutil.copytree(trained, work / "run"))
        (run / "eval-test.json").unlink()  # written by training: eval must write it again
        submit("eval", "eval", "run", "--json")

        # Any size and mode: an 8x8 digit upscaled to a 64x64 RGB PNG.
        big = digit_image(0).resize((64, 64), Image.Resampling.NEAREST).convert("RGB")
        big.save(work / "digit.png")
        submit("predict-file", "predict", "run", "digit.png", "--top-k", "3", "--json")

        folder = work / "images"
        (folder / "nested").mkdir(parents=True)
        digit_image(1).save(folder / "one.png")
        digit_image(2).resize((28, 28)).convert("RGBA").save(folder / "nested" / "two.png")
        digit_image(3).convert("RGB").save(folder / "three.jpg", quality=95)
        digit_image(4).save(folder / "four.bmp")
        (folder / "readme.txt").write_text("not an image: skipped\n")
        # This one reads the session's run in place: predict must not write to it.
        before = snapshot(trained)
        submit("predict-folder", "predict", trained, "images")

        results = {key: pool.result(key) for key in list(pool.keys())}
        return {"run": run, "trained_before": before, "trained_after": snapshot(trained), **results}
    finally:
        pool.close()


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


# --help and --version -------------------------------------------------------------------------


def test_help_lists_every_verb(cli):
    out = ok(cli("--help"))
    assert out.startswith("usage: kiln")
    listed = re.findall(r"^    ([a-z]+)(?: |$)", out, flags=re.MULTILINE)
    assert listed == list(dict.fromkeys(v[0] for v in VERBS))


def test_help_and_config_errors_answer_without_importing_torch():
    """`kiln --help` and a mistyped key answer at once: neither imports torch or Optuna (seconds
    each). Run in a fresh interpreter, where nothing is imported yet."""
    code = (
        "import sys, kiln.cli\n"
        "kiln.cli.build_parser()\n"
        "code = kiln.cli.main(['train', 'epoch=3'])\n"
        "print(code, sorted(m for m in ('torch', 'torchvision', 'optuna') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "epoch: unknown key" in result.stderr
    assert result.stdout.split() == ["2", "[]"], result.stdout + result.stderr


def test_data_make_offers_every_maker():
    from kiln.cli.data import MAKER_NAMES
    from kiln.data.make import MAKERS

    assert sorted(MAKER_NAMES) == sorted(MAKERS)


@pytest.mark.parametrize("verb", VERBS, ids="-".join)
def test_every_verb_has_help(cli, verb):
    out = ok(cli(*verb, "--help"))
    assert out.startswith(f"usage: kiln {' '.join(verb)}"), out


def test_train_help_shows_examples_and_aliases(cli):
    out = ok(cli("train", "--help"))
    assert "kiln train --resume" in out
    assert "aliases: data model epochs batch lr device seed name" in out


@pytest.mark.parametrize("verb", LEAVES, ids="-".join)
def test_every_verb_has_quiet_and_verbose_and_its_own_usage_on_a_bad_flag(cli, verb):
    out = ok(cli(*verb, "--help"))
    assert "-q, --quiet" in out and "-v, --verbose" in out
    result = cli(*verb, *POSITIONALS.get(" ".join(verb), []), "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: kiln {' '.join(verb)}"), result.stderr
    assert "--no-such-flag" in result.stderr and "Traceback" not in result.stderr


def test_a_flag_for_a_setting_is_answered_with_the_setting(cli):
    result = cli("train", "--epochs", "3")
    assert result.returncode == 2 and result.stderr.startswith("usage: kiln train")
    assert "epochs=3" in result.stderr


@pytest.mark.parametrize(
    "args, meant",
    [
        (["trian"], "did you mean 'train'?"),
        (["list", "model"], "did you mean 'models'?"),
        (["eval", "run", "--chekpoint", "last"], "did you mean --checkpoint?"),
        (["train", "epoch=3"], "epoch: unknown key (did you mean 'epochs'?)"),
        (["train", "optim.name=adamx"], "did you mean 'adam'?"),
        (["train", "data=digit"], "did you mean 'digits'?"),
        (["train", "model=mpl"], "did you mean 'mlp'?"),
        (["train", "run.loggers=[mlfow]"], "did you mean 'mlflow'?"),
    ],
    ids=["verb", "choice", "flag", "key", "optimizer", "dataset", "model", "logger"],
)
def test_did_you_mean(cli, args, meant):
    result = cli(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert meant in result.stderr, result.stderr


def test_a_wrong_value_is_quoted_once(cli):
    result = cli("train", "optim.name=adamx")
    assert result.stderr.count("adamx") == 1, result.stderr


def test_completion_scripts_complete_verbs_actions_and_flags(cli, tmp_path):
    bash = ok(cli("completion", "bash"))
    assert "complete -o filenames -F _kiln kiln" in bash
    assert "bashcompinit" in ok(cli("completion", "zsh"))
    script = tmp_path / "kiln.bash"
    script.write_text(bash)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        code = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _kiln; "
                'printf "%s\\n" "${COMPREPLY[@]}"')  # fmt: skip
        done = subprocess.run(["bash", "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("kiln", "tr") == ["train"]
    assert complete("kiln", "data", "s") == ["show", "stats"]
    assert "--checkpoint" in complete("kiln", "eval", "--che")
    assert complete("kiln", "list", "mo") == ["models"]


def test_quiet_training_prints_nothing_but_writes_the_run(outputs):
    result = outputs["quiet-train"]
    assert ok(result) == "", result.stdout
    assert (outputs["run"].parent / "runs" / "digits-mlp" / "checkpoints" / "best.pt").is_file()


def test_data_stats_takes_data_as_in_train(outputs):
    stats = json.loads(ok(outputs["data-stats-alias"]))
    assert stats["dataset"] == "digits" and stats["totals"]["test"] == DIGITS_TEST_SIZE


def test_version(cli):
    assert ok(cli("--version")).strip() == "kiln 0.1.0"


def test_missing_verb_is_a_usage_error(cli):
    result = cli()
    assert result.returncode == 2 and "usage: kiln" in result.stderr
    assert "Traceback" not in result.stderr


# list -----------------------------------------------------------------------------------------


def names_in_table(text: str, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]


def test_list_datasets(outputs):
    assert names_in_table(ok(outputs["list-datasets"]), DATASETS) == []


def test_list_models_with_their_options(outputs):
    out = ok(outputs["list-models"])
    assert names_in_table(out, MODELS) == []
    assert "hidden=" in out  # mlp's options are shown


# config show ----------------------------------------------------------------------------------


def test_config_show_prints_the_fully_resolved_config(outputs):
    cfg = yaml.safe_load(ok(outputs["config-show"]))
    assert cfg["train"]["epochs"] == 3
    assert cfg["model"]["hidden"] == [32]
    assert cfg["model"]["name"] == "mlp"
    assert set(cfg) == set(RunConfig.model_fields)
    for section, field in RunConfig.model_fields.items():
        if section in ("task", "imports", "model"):
            continue
        assert set(cfg[section]) == set(field.annotation.model_fields), section
    assert set(cfg["train"]["early_stop"]) == {"monitor", "patience"}
    # every mlp option is filled in, not just the one given
    common = {"name", "init", "weights", "freeze", "unfreeze_epoch", "tta", "layer_sizes"}
    options = {"hidden", "activation", "dropout", "batchnorm", "final_activation"}
    assert set(cfg["model"]) == common | options
    assert RunConfig.model_validate(cfg).train.epochs == 3  # and it is a valid config


# eval -----------------------------------------------------------------------------------------


def test_eval_json_is_one_object_with_every_metric(outputs):
    out = ok(outputs["eval"])
    assert len(out.strip().splitlines()) == 1, out
    result = json.loads(out)
    assert isinstance(result, dict)
    assert set(EVAL_KEYS) <= set(result)
    for key in EVAL_KEYS[:5]:
        assert 0.0 <= result[key] <= 1.0, key
    assert result["samples"] == DIGITS_TEST_SIZE


def test_eval_confusion_matrix_covers_the_test_split(outputs):
    result = json.loads(ok(outputs["eval"]))
    cm = np.array(result["confusion_matrix"])
    assert cm.shape == (10, 10)
    info = json.loads((outputs["run"] / "info.json").read_text())
    assert cm.sum() == info["samples"]["test"] == DIGITS_TEST_SIZE
    assert [row["class"] for row in result["per_class"]] == [str(d) for d in range(10)]
    assert [row["support"] for row in result["per_class"]] == cm.sum(axis=1).tolist()
    assert result["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)


def test_eval_writes_eval_test_json_in_the_run(outputs):
    printed = json.loads(ok(outputs["eval"]))
    saved_path = outputs["run"] / "eval-test.json"
    assert saved_path.is_file()
    saved = json.loads(saved_path.read_text())
    assert saved["split"] == "test" and saved["checkpoint"] == "best"
    for key in EVAL_KEYS:
        assert saved[key] == printed[key], key


# predict --------------------------------------------------------------------------------------


def check_prediction(entry: dict, k: int) -> None:
    top = entry["top_k"]
    assert len(top) == k
    labels = [t["label"] for t in top]
    assert len(set(labels)) == k and set(labels) <= {str(d) for d in range(10)}
    probs = [t["probability"] for t in top]
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) <= 1.0 + 1e-5
    assert (entry["label"], entry["probability"]) == (labels[0], probs[0])


def test_predict_one_upscaled_rgb_png_top_3_json(outputs):
    results = json.loads(ok(outputs["predict-file"]))
    assert isinstance(results, list) and len(results) == 1
    assert results[0]["file"] == "digit.png"
    check_prediction(results[0], k=3)


def test_predict_a_folder(outputs):
    out = ok(outputs["predict-folder"])
    lines = out.strip().splitlines()
    expected = {"images/one.png", "images/nested/two.png", "images/three.jpg", "images/four.bmp"}
    files = {line.split(": ", 1)[0] for line in lines}
    assert files == expected, out
    assert len(lines) == len(expected)
    ranked = re.compile(r"^\S+: \S+ \d+\.\d%(  \S+ \d+\.\d%){2}$")  # default --top-k 3
    assert all(ranked.match(line) for line in lines), out


def test_predict_does_not_write_to_the_run(outputs):
    ok(outputs["predict-folder"])
    assert outputs["trained_after"] == outputs["trained_before"]


EXIT_SCRIPT = """
import atexit, sys, threading, time
from kiln.cli.exit import exit_now

atexit.register(lambda: open(sys.argv[1], "w").write("atexit ran"))
if sys.argv[2] == "thread":  # a thread still at work: the normal exit waits for it
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread done", flush=True))).start()
print("unflushed output", end="")
exit_now(3)
"""


@pytest.mark.parametrize("mode", ["alone", "thread"])
def test_the_quick_exit_runs_exit_handlers_flushes_and_keeps_the_code(tmp_path: Path, mode: str):
    marker = tmp_path / "marker"
    out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(marker), mode],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 3
    assert out.stdout.startswith("unflushed output")
    assert marker.read_text() == "atexit ran"
    assert ("thread done" in out.stdout) == (mode == "thread")
