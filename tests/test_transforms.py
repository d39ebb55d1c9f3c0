"""data.augment: presets and explicit lists resolve to a canonical, YAML-safe form and build into
v2 pipelines that keep uint8 (C, H, W) images at the run's size."""

from __future__ import annotations

import pickle

import pytest
import torch
import yaml

from kiln.data.transforms import PRESETS, STEPS, build_augment, resolve_augment
from kiln.errors import ConfigError

SHAPES = [(3, 32, 32), (1, 28, 28), (3, 24, 40), (1, 40, 24)]


def _image(shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def _check_output(augment: torch.nn.Module, shape: tuple[int, int, int], calls: int = 8) -> None:
    for i in range(calls):
        out = augment(_image(shape, seed=i))
        assert out.shape == shape
        assert out.dtype == torch.uint8


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_presets_keep_shape_and_dtype(preset, shape):
    steps = resolve_augment(preset)
    augment = build_augment(steps, shape[1:], shape[0])
    _check_output(augment, shape)


def test_preset_names_and_contents():
    assert list(PRESETS) == ["none", "light", "standard", "strong"]
    assert resolve_augment("none") == []
    assert [next(iter(s)) for s in resolve_augment("light")] == ["flip"]
    assert [next(iter(s)) for s in resolve_augment("standard")] == ["random_resized_crop", "flip"]
    strong = resolve_augment("strong")
    assert [next(iter(s)) for s in strong] == [
        "random_resized_crop",
        "flip",
        "rotation",
        "color_jitter",
        "random_erasing",
    ]
    assert strong[0]["random_resized_crop"]["scale"] == [0.5, 1.0]
    assert strong[2]["rotation"]["degrees"] == 15
    assert strong[4]["random_erasing"]["p"] == 0.25
    assert resolve_augment(" Strong ") == strong


def test_empty_list_builds_identity():
    augment = build_augment([], (8, 8), 3)
    x = _image((3, 8, 8))
    assert torch.equal(augment(x), x)


@pytest.mark.parametrize("name", list(STEPS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_step_keeps_shape_and_dtype(name, shape):
    steps = resolve_augment([name])
    _check_output(build_augment(steps, shape[1:], shape[0]), shape, calls=4)


@pytest.mark.parametrize("name", ["color_jitter", "auto_augment", "rand_augment", "grayscale"])
def test_colour_steps_run_on_one_channel(name):
    """v2 handles 1-channel images: no error, one channel out (colour ops are no-ops there)."""
    steps = resolve_augment([{name: {"policy": "svhn"}} if name == "auto_augment" else name])
    _check_output(build_augment(steps, (28, 28), 1), (1, 28, 28))


def test_grayscale_keeps_three_channels_and_greys_them():
    augment = build_augment(resolve_augment([{"grayscale": 1.0}]), (16, 16), 3)
    out = augment(_image((3, 16, 16)))
    assert out.shape == (3, 16, 16)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_color_jitter_drops_saturation_and_hue_on_one_channel():
    steps = resolve_augment([{"color_jitter": {"brightness": 0.3, "saturation": 0.3, "hue": 0.1}}])
    jitter = build_augment(steps, (8, 8), 1).transforms[0]
    assert jitter.saturation is None and jitter.hue is None and jitter.brightness is not None
    jitter = build_augment(steps, (8, 8), 3).transforms[0]
    assert jitter.saturation is not None and jitter.hue is not None


def test_yaml_forms_resolve_to_canonical_with_defaults():
    text = """
    - flip
    - rotation: 10
    - random_resized_crop: {scale: [0.8, 1.0]}
    - translate: 0.2
    - color_jitter
    - color_jitter: {brightness: 0.2}
    - random_resized_crop: 0.5
    - auto_augment: cifar10
    - flip: null
    """
    steps = resolve_augment(yaml.safe_load(text))
    assert steps == [
        {"flip": {"p": 0.5}},
        {"rotation": {"degrees": 10, "interpolation": "nearest", "fill": 0}},
        {
            "random_resized_crop": {
                "scale": [0.8, 1.0],
                "ratio": [3 / 4, 4 / 3],
                "interpolation": "bilinear",
                "antialias": True,
            }
        },
        {"translate": {"translate": [0.2, 0.2], "interpolation": "nearest", "fill": 0}},
        {"color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0}},
        {"color_jitter": {"brightness": 0.2, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}},
        {
            "random_resized_crop": {
                "scale": [0.5, 1.0],
                "ratio": [3 / 4, 4 / 3],
                "interpolation": "bilinear",
                "antialias": True,
            }
        },
        {"auto_augment": {"policy": "cifar10", "interpolation": "nearest", "fill": 0}},
        {"flip": {"p": 0.5}},
    ]
    assert resolve_augment(steps) == steps


def test_every_step_has_all_defaults_and_resolving_is_idempotent():
    for name, step in STEPS.items():
        ((got_name, params),) = resolve_augment([name])[0].items()
        assert got_name == name
        assert list(params) == list(step.defaults)
    for spec in [list(STEPS), *PRESETS]:
        once = resolve_augment(spec)
        assert resolve_augment(once) == once


def test_tuples_become_lists():
    steps = resolve_augment([{"random_resized_crop": {"scale": (0.5, 1.0)}}])
    assert steps[0]["random_resized_crop"]["scale"] == [0.5, 1.0]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_resolved_lists_survive_yaml_round_trip(preset):
    steps = resolve_augment(preset)
    every = resolve_augment(list(STEPS))
    for spec in (steps, every):
        assert yaml.safe_load(yaml.safe_dump({"augment": spec}))["augment"] == spec


def test_resolve_does_not_mutate_presets_or_input():
    spec = [{"rotation": {"degrees": 5}}]
    before = repr(PRESETS)
    steps = resolve_augment(spec)
    steps[0]["rotation"]["degrees"] = 99
    assert spec == [{"rotation": {"degrees": 5}}]
    resolve_augment("strong")[0]["random_resized_crop"]["scale"][0] = 0.01
    assert repr(PRESETS) == before


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("heavy", "data.augment: unknown preset 'heavy'; presets: none, light, standard, strong"),
        ("flip", "data.augment: unknown preset 'flip'"),
        (["flip", "rotation", "blurr"], "data.augment[2]: unknown transform 'blurr'; available:"),
        ([{"rotaton": 5}], "data.augment[0]: unknown transform 'rotaton'"),
        (
            ["flip", {"rotation": {"degree": 3}}],
            "data.augment[1].rotation: unknown parameter 'degree'; parameters: degrees,",
        ),
        (["flip", {"rotation": -5}], "data.augment[1].rotation:"),
        (["flip", {"rotation": "a lot"}], "data.augment[1].rotation:"),
        ([{"flip": 2}], "data.augment[0].flip:"),
        ([{"flip": "often"}], "data.augment[0].flip:"),
        ([{"flip": True}], "data.augment[0].flip: p must be"),
        ([{"translate": [0.1]}], "data.augment[0].translate:"),
        ([{"color_jitter": -1}], "data.augment[0].color_jitter:"),
        ([{"random_resized_crop": [1.0, 0.5]}], "data.augment[0].random_resized_crop: scale"),
        ([{"random_erasing": {"value": "random"}}], "data.augment[0].random_erasing:"),
        ([{"gaussian_blur": 4}], "data.augment[0].gaussian_blur:"),
        ([{"auto_augment": "cifar100"}], "data.augment[0].auto_augment: unknown policy"),
        ([{"rand_augment": 31}], "data.augment[0].rand_augment: magnitude"),
        ([{"rotation": {"interpolation": "cubic"}}], "data.augment[0].rotation: unknown interp"),
        ([{"random_resized_crop": {"antialias": "yes"}}], "random_resized_crop: antialias"),
        (["flip", {"flip": 1, "vflip": 1}], "data.augment[1]: expected a transform name"),
        (["flip", 3], "data.augment[1]: expected a transform name"),
        ([["flip"]], "data.augment[0]: expected a transform name"),
        ([{}], "data.augment[0]: expected a transform name"),
        (3, "data.augment: expected a preset name"),
        (None, "data.augment: expected a preset name"),
    ],
)
def test_errors_name_key_and_index(spec, expected):
    with pytest.raises(ConfigError) as info:
        resolve_augment(spec)
    assert expected in str(info.value)


def test_error_uses_given_key():
    with pytest.raises(ConfigError, match=r"^train\.augment\[0\]: unknown transform"):
        resolve_augment(["nope"], key="train.augment")


@pytest.mark.parametrize(
    ("steps", "size", "channels", "expected"),
    [
        ([{"rotation": {"fill": [1, 2]}}], (24, 40), 3, "data.augment[0].rotation: fill has 2"),
        ([{"random_erasing": {"value": [9, 9, 9]}}], (28, 28), 1, "random_erasing: value has 3"),
        (["flip", {"gaussian_blur": 49}], (24, 40), 3, "data.augment[1].gaussian_blur: kernel"),
        (["blurr"], (24, 40), 3, "data.augment[0]: unknown transform"),
        (["flip"], (24, 40), 2, "data.channels"),
    ],
)
def test_build_errors(steps, size, channels, expected):
    with pytest.raises(ConfigError) as info:
        build_augment(steps, size, channels)
    assert expected in str(info.value)


def test_per_channel_fill_and_value_are_accepted():
    steps = resolve_augment(
        [{"rotation": {"fill": [1, 2, 3]}}, {"random_erasing": {"p": 1.0, "value": [1, 2, 3]}}]
    )
    _check_output(build_augment(steps, (16, 16), 3), (3, 16, 16))
    steps = resolve_augment([{"random_erasing": {"p": 1.0, "value": 255}}])
    _check_output(build_augment(steps, (16, 16), 1), (1, 16, 16))


def test_flip_with_p1_flips():
    x = _image((3, 24, 40))
    assert torch.equal(build_augment(resolve_augment([{"flip": 1.0}]), (24, 40), 3)(x), x.flip(-1))
    assert torch.equal(build_augment(resolve_augment([{"vflip": 1.0}]), (24, 40), 3)(x), x.flip(-2))
    assert torch.equal(build_augment(resolve_augment([{"flip": 0.0}]), (24, 40), 3)(x), x)


@pytest.mark.parametrize(
    "step",
    [
        "crop",
        {"crop": 8},
        {"crop": {"padding": 4, "padding_mode": "reflect"}},
        "random_resized_crop",
        {"random_resized_crop": 0.5},
        {"random_resized_crop": {"scale": [0.1, 0.2], "ratio": [0.2, 5.0]}},
    ],
)
@pytest.mark.parametrize("shape", [(3, 24, 40), (1, 40, 24), (3, 32, 32)])
def test_crops_return_run_size(step, shape):
    augment = build_augment(resolve_augment([step]), shape[1:], shape[0])
    _check_output(augment, shape, calls=10)


def test_crop_pads_then_crops():
    """The CIFAR recipe: a 4-pixel zero border, then a random crop back to the run size."""
    augment = build_augment(resolve_augment(["crop"]), (8, 8), 1)
    ones = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    outs = [augment(ones) for _ in range(20)]
    assert all(o.shape == (1, 8, 8) for o in outs)
    assert any((o == 0).any() for o in outs)  # some crops include padding


def test_strong_is_random_but_reproducible():
    augment = build_augment(resolve_augment("strong"), (32, 32), 3)
    x = _image((3, 32, 32))
    torch.manual_seed(123)
    first = [augment(x) for _ in range(4)]
    torch.manual_seed(123)
    again = [augment(x) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])


def test_built_module_pickles():
    """DataLoader workers started with spawn receive the module by pickle."""
    augment = build_augment(resolve_augment("strong"), (24, 40), 1)
    clone = pickle.loads(pickle.dumps(augment))
    x = _image((1, 24, 40))
    torch.manual_seed(5)
    a = augment(x)
    torch.manual_seed(5)
    assert torch.equal(clone(x), a)


def test_build_accepts_canonical_list_loaded_from_yaml():
    steps = resolve_augment("strong")
    loaded = yaml.safe_load(yaml.safe_dump(steps))
    a = build_augment(steps, (28, 28), 1)
    b = build_augment(loaded, (28, 28), 1)
    x = _image((1, 28, 28))
    torch.manual_seed(7)
    out_a = a(x)
    torch.manual_seed(7)
    assert torch.equal(b(x), out_a)
