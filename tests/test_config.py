"""kiln.config: defaults, YAML + dotted overrides, aliases, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from kiln.config import (
    ALIASES,
    OPTIMIZERS,
    SCHEDULERS,
    RunConfig,
    build_config,
    parse_override,
    read_yaml,
)
from kiln.errors import ConfigError, KilnError

SECTIONS = (
    "task",
    "data",
    "model",
    "optim",
    "sched",
    "train",
    "run",
    "tune",
    "distill",
)  # task sections (segment:, gan:) belong to the task


def config_error(*overrides: str, source=None) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(source, list(overrides))
    return str(info.value)


def names_key(message: str, key: str) -> bool:
    """The message has a line that starts with the full dotted key, e.g. `  optim.lr: ...`."""
    return re.search(rf"^\s*(error: )?{re.escape(key)}: ", message, re.MULTILINE) is not None


def get(cfg: RunConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def required_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if field.is_required():
            out.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += required_fields(field.annotation, f"{prefix}{name}.")
    return out


# Defaults -------------------------------------------------------------------------------------


def test_every_key_has_a_default():
    assert required_fields(RunConfig) == []


def test_defaults_are_a_complete_run():
    cfg = build_config()
    assert cfg == RunConfig()
    tree = cfg.to_dict()
    assert tuple(tree) == ("task", "imports", *SECTIONS[1:])
    assert tree["imports"] == []  # no modules of the user's to import
    for section in SECTIONS[1:]:
        assert isinstance(tree[section], dict) and tree[section], section
    assert tree["train"]["early_stop"] == {"monitor": "auto", "patience": None}
    assert (cfg.data.name, cfg.model.name, cfg.optim.name) == ("digits", "convnet", "adam")
    assert cfg.sched.name in SCHEDULERS
    assert cfg.train.epochs >= 1 and cfg.optim.lr > 0 and 0 < cfg.data.val_fraction < 1
    assert cfg.train.device == "auto" and cfg.run.dir == "runs" and cfg.run.name is None


def test_yaml_round_trip():
    cfg = build_config(None, ["model.hidden=[32]", "optim.name=sgd", "train.grad_clip=1.0"])
    assert build_config(yaml.safe_load(cfg.to_yaml())) == cfg


def test_empty_yaml_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert build_config(path) == RunConfig()


# Merging --------------------------------------------------------------------------------------


def test_yaml_file_and_overrides_merge(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "data:\n  name: mnist\n  batch_size: 128\n"
        "model:\n  name: mlp\n  hidden: [256]\n"
        "optim:\n  name: sgd\n  lr: 0.1\n"
    )
    cfg = build_config(path, ["optim.lr=0.05", "epochs=5", "model.dropout=0.25"])
    assert cfg.data.name == "mnist" and cfg.data.batch_size == 128  # from the file
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.05  # override wins over the file
    assert cfg.train.epochs == 5  # override of a key the file does not set
    assert cfg.model.kwargs() == {"hidden": [256], "dropout": 0.25}
    assert cfg.data.val_fraction == RunConfig().data.val_fraction  # untouched default
    assert cfg.optim.momentum == RunConfig().optim.momentum


def test_later_override_wins():
    assert build_config(None, ["lr=0.1", "optim.lr=0.2"]).optim.lr == 0.2


def test_dict_source_and_overrides_do_not_mutate_the_input():
    source = {"optim": {"lr": 0.1}, "train": {"epochs": 3}}
    cfg = build_config(source, {"optim.lr": 0.5, "epochs": 4})
    assert cfg.optim.lr == 0.5 and cfg.train.epochs == 4
    assert source == {"optim": {"lr": 0.1}, "train": {"epochs": 3}}


def test_override_into_a_value_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n")
    message = config_error("optim.lr.x=1", source=path)
    assert "optim.lr" in message and "not a section" in message


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("model.hidden=[512,512]", "model.hidden", [512, 512]),
        ("train.deterministic=true", "train.deterministic", True),
        ("train.deterministic=false", "train.deterministic", False),
        ("optim.lr=3e-3", "optim.lr", 3e-3),
        ("optim.lr=0.003", "optim.lr", 3e-3),
        ("train.epochs=7", "train.epochs", 7),
        ("run.name=my run", "run.name", "my run"),
        ("train.grad_clip=null", "train.grad_clip", None),
        ("data.root=", "data.root", None),
    ],
)
def test_override_values_are_parsed_as_yaml(override, key, expected):
    cfg = build_config(None, [override])
    value = cfg.model.kwargs()[key.split(".")[1]] if key.startswith("model.") else get(cfg, key)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_override_returns_yaml_values():
    assert parse_override("model.hidden=[512, 512]") == ("model.hidden", [512, 512])
    assert parse_override("train.deterministic=true") == ("train.deterministic", True)
    assert parse_override("optim.lr=0.003") == ("optim.lr", 0.003)
    assert parse_override("lr=0.5") == ("optim.lr", 0.5)  # aliases apply here too
    assert parse_override("run.name=a=b") == ("run.name", "a=b")  # split on the first '=' only


def test_exponent_notation_is_a_float_everywhere():
    assert parse_override("optim.lr=3e-3") == ("optim.lr", 3e-3)
    dropout = build_config(None, ["model.dropout=1e-1"]).model.kwargs()["dropout"]
    assert dropout == 0.1 and isinstance(dropout, float)


@pytest.mark.parametrize("text", ["optim.lr", "lr 3e-3", ""])
def test_override_without_equals_is_an_error(text):
    with pytest.raises(ConfigError, match="key=value"):
        parse_override(text)


def test_override_without_a_key_is_an_error():
    with pytest.raises(ConfigError, match="no key"):
        parse_override("=3")


def test_override_with_invalid_yaml_is_an_error():
    with pytest.raises(ConfigError, match=r"model\.hidden"):
        parse_override("model.hidden=[1, 2")


# Aliases --------------------------------------------------------------------------------------

ALIAS_CASES = [
    ("data", "mnist", "data.name", "mnist"),
    ("model", "cnn", "model.name", "cnn"),
    ("epochs", "3", "train.epochs", 3),
    ("batch", "32", "data.batch_size", 32),
    ("lr", "0.01", "optim.lr", 0.01),
    ("device", "cpu", "train.device", "cpu"),
    ("seed", "42", "train.seed", 42),
    ("name", "exp1", "run.name", "exp1"),
]


def test_alias_table_is_the_documented_one():
    assert {alias: key for alias, _, key, _ in ALIAS_CASES} == ALIASES


@pytest.mark.parametrize(("alias", "raw", "key", "expected"), ALIAS_CASES)
def test_aliases_map_to_their_keys(alias, raw, key, expected):
    assert get(build_config(None, [f"{alias}={raw}"]), key) == expected
    value = yaml.safe_load(raw)
    assert get(build_config(None, {alias: value}), key) == expected  # dict overrides too


def test_alias_errors_name_the_full_key():
    assert names_key(config_error("lr=-1"), "optim.lr")
    assert names_key(config_error("batch=0"), "data.batch_size")


# Validation errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "needles"),
    [
        ("optim.lr=-0.1", "optim.lr", ["-0.1"]),
        ("optim.lr=0", "optim.lr", []),
        ("epochs=0", "train.epochs", []),
        ("train.epochs=-3", "train.epochs", []),
        ("epochs=abc", "train.epochs", ["integer", "abc"]),
        ("epochs=2.5", "train.epochs", ["integer"]),
        ("optim.lr=fast", "optim.lr", ["fast"]),
        ("train.deterministic=maybe", "train.deterministic", []),
        ("model.name=[1]", "model.name", []),
        ("optim.name=lion", "optim.name", ["lion", *OPTIMIZERS]),
        ("sched.name=linear", "sched.name", ["linear", *SCHEDULERS]),
        ("device=tpu", "train.device", ["tpu", "cpu", "cuda"]),
        ("data.val_fraction=1", "data.val_fraction", []),
        ("data.val_fraction=1.5", "data.val_fraction", ["1.5"]),
        ("data.val_fraction=-0.1", "data.val_fraction", []),
        ("batch=0", "data.batch_size", []),
        ("train.precision=fp8", "train.precision", ["fp32", "bf16", "fp16"]),
        ("train.early_stop.monitor=acc", "train.early_stop.monitor", ["val_acc", "val_loss"]),
        ("train.early_stop.patience=0", "train.early_stop.patience", []),
        ("train.label_smoothing=1", "train.label_smoothing", []),
        ("optim.momentum=1", "optim.momentum", []),
        ("data.subset=0", "data.subset", []),
    ],
)
def test_invalid_values_name_the_key(override, key, needles):
    message = config_error(override)
    assert names_key(message, key), message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(
    ("override", "key", "valid"),
    [
        ("foo=1", "foo", ["task", "data", "model", "optim", "sched", "train", "run"]),
        ("optim.lrr=1", "optim.lrr", ["name", "lr", "momentum", "nesterov", "weight_decay", "l1"]),
        ("data.batchsize=8", "data.batchsize", ["batch_size", "val_fraction", "root"]),
        ("train.early_stop.wait=3", "train.early_stop.wait", ["monitor", "patience"]),
        ("run.folder=x", "run.folder", ["name", "dir"]),
    ],
)
def test_unknown_keys_are_named_with_the_valid_ones(override, key, valid):
    message = config_error(override)
    assert names_key(message, key), message
    assert "unknown key" in message
    for name in valid:
        assert name in message, message


def test_unknown_key_in_a_yaml_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    message = config_error(source=path)
    assert str(path) in message and names_key(message, "optim.lrr")


def test_every_error_is_reported_at_once():
    message = config_error("lr=-1", "epochs=0", "optim.name=lion")
    for key in ("optim.lr", "train.epochs", "optim.name"):
        assert names_key(message, key), message


def test_config_error_is_a_kiln_error_with_exit_code_2():
    with pytest.raises(KilnError) as info:
        build_config(None, ["epochs=0"])
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_valid_devices_are_accepted(device):
    assert build_config(None, [f"device={device}"]).train.device == device


@pytest.mark.parametrize("device", ["cpu:abc", "cuda:x", "cuda:-1"])
def test_malformed_device_suffix_is_rejected(device):
    assert names_key(config_error(f"device={device}"), "train.device")


# YAML files -----------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  name: digits\n   batch_size: 3\noptim:\n  lr: 0.1\n")
    message = config_error(source=path)
    assert f"{path}:3" in message, message
    assert "YAML" in message


def test_yaml_tab_indent_names_file_and_line(tmp_path):
    path = tmp_path / "tabs.yaml"
    path.write_text("train:\n  epochs: 2\ndata:\n\tname: digits\n")
    assert f"{path}:4" in config_error(source=path)


@pytest.mark.parametrize("text", ["- data\n- model\n", "just a string\n", "42\n"])
def test_yaml_top_level_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    message = str(info.value)
    assert str(path) in message and "mapping" in message
    with pytest.raises(ConfigError):
        build_config(path)


def test_missing_yaml_file_is_named(tmp_path):
    path = tmp_path / "nope.yaml"
    message = config_error(source=path)
    assert str(path) in message and "does not exist" in message


def test_section_given_as_a_value_names_the_section(tmp_path):
    path = tmp_path / "flat.yaml"
    path.write_text("optim: adam\n")
    assert names_key(config_error(source=path), "optim")


# kiln.api.resolve: model options ----------------------------------------------------------------

MLP_DEFAULTS = {
    "hidden": [512, 512],
    "activation": "relu",
    "dropout": 0.0,
    "batchnorm": False,
    "final_activation": None,
}


def test_resolve_fills_in_model_defaults():
    from kiln.api import resolve

    cfg = resolve(build_config(None, ["model=mlp"]))
    assert cfg.model.name == "mlp"
    assert cfg.model.kwargs() == MLP_DEFAULTS
    common = {
        "init": "default",
        "weights": None,
        "freeze": "none",
        "unfreeze_epoch": None,
        "tta": "none",
        "layer_sizes": None,
    }
    assert yaml.safe_load(cfg.to_yaml())["model"] == {"name": "mlp", **common, **MLP_DEFAULTS}
    default = resolve(build_config())  # the default model: convnet, every option filled in
    assert default.model.name == "convnet" and default.model.kwargs()["depth"] >= 1


def test_resolve_keeps_given_options_and_is_idempotent():
    from kiln.api import resolve

    cfg = resolve(build_config(None, ["model=mlp", "model.hidden=[32]", "model.dropout=0.5"]))
    assert cfg.model.kwargs() == {**MLP_DEFAULTS, "hidden": [32], "dropout": 0.5}
    assert resolve(cfg) == cfg
    assert cfg.optim == RunConfig().optim  # other sections untouched


def test_resolve_model_without_options():
    from kiln.api import resolve

    assert resolve(build_config(None, ["model=cnn"])).model.kwargs() == {}


def test_resolve_rejects_unknown_model_option_naming_it_and_the_valid_ones():
    from kiln.api import resolve

    with pytest.raises(ConfigError) as info:
        resolve(build_config(None, ["model=mlp", "model.foo=1"]))
    message = str(info.value)
    assert names_key(message, "model.foo"), message
    for option in MLP_DEFAULTS:
        assert option in message, message


def test_resolve_rejects_options_of_another_model():
    from kiln.api import resolve

    with pytest.raises(ConfigError) as info:
        resolve(build_config(None, ["model=cnn", "model.hidden=[32]"]))
    assert names_key(str(info.value), "model.hidden")


def test_resolve_rejects_unknown_model_listing_the_valid_ones():
    from kiln.api import resolve

    with pytest.raises(ConfigError) as info:
        resolve(build_config(None, ["model=transformer"]))
    message = str(info.value)
    assert names_key(message, "model.name") and "transformer" in message
    for name in ("mlp", "lenet", "cnn", "resnet18"):
        assert name in message


def test_config_files_in_recipes_are_valid(monkeypatch):
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    files = sorted(recipes.rglob("*.yaml")) if recipes.is_dir() else []
    if not files:
        pytest.skip("no recipes/*.yaml in this checkout")
    from kiln.api import resolve

    monkeypatch.chdir(recipes.parent)  # recipes/tutorials import recipes.tutorials.models
    for path in files:
        resolve(build_config(path))
