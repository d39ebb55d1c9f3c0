"""The tutorials' own model classes run as written with `kiln.train(config, model=Net())`.

Each module below is written the way the PyTorch tutorials write theirs (sized for the 1x8x8
digits): `x.view(-1, N)` after convolutions (the MNIST example, which also ends in log_softmax
and uses Dropout2d), `x.view(x.shape[0], -1)` (LeNet), `torch.flatten`, `nn.Flatten` in an
`nn.Sequential`, and layers picked from an `nn.ModuleDict` / `nn.ModuleList` in `forward`.
channels-last (train.channels_last=auto on a CPU) must not break them, and a module that fails
on Kiln's inputs gets one message naming it, the input shape and what to try.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import kiln
from kiln.errors import KilnError
from kiln.tasks.classify.task import ClassifyTask


class MnistExampleNet(nn.Module):
    """The PyTorch MNIST example's Net: view(-1, 80), Dropout2d, log_softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=3, padding=1)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(80, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 80)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


class LeNetView(nn.Module):
    """LeNet as the tutorials write it: x.view(x.shape[0], -1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.shape[0], -1)
        return self.fc2(F.relu(self.fc1(x)))


class TorchFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(x, 1))


def sequential_flatten() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip


class ChosenInForward(nn.Module):
    """Layers picked by name from an nn.ModuleDict and looped over from an nn.ModuleList."""

    def __init__(self, activation: str = "relu"):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])
        self.activations = nn.ModuleDict({"relu": nn.ReLU(), "tanh": nn.Tanh()})
        self.activation = activation
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        for block in self.blocks:
            x = self.activations[self.activation](block(x))
        return self.head(x.view(x.size(0), -1))


def train(tmp_path, model: nn.Module, **overrides) -> kiln.Run:
    return kiln.train(
        model=model, progress=True, **{
            "train.device": "cpu", "train.epochs": 2, "optim.lr": 0.01, "sched.name": "none",
            "train.label_smoothing": 0.0, "run.report": False, "run.dir": str(tmp_path / "runs"),
            **overrides,
        },
    )  # fmt: skip


MODULES = {
    "view(-1, 80), Dropout2d, log_softmax": (MnistExampleNet, False),
    "view(x.shape[0], -1)": (LeNetView, False),
    "torch.flatten": (TorchFlatten, True),
    "nn.Flatten in nn.Sequential": (sequential_flatten, True),
    "ModuleDict/ModuleList in forward": (ChosenInForward, False),
}


@pytest.mark.parametrize("name", MODULES)
def test_tutorial_style_modules_train_as_written(name, tmp_path, capsys):
    make, runs_channels_last = MODULES[name]
    run = train(tmp_path, make())
    out = capsys.readouterr().out
    assert len(run.history) == 2 and run.test_acc > 0.6, out
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    # channels-last kept only where the module runs on it; else one line says so
    assert saved["train"]["channels_last"] is runs_channels_last
    assert out.count("does not run on channels-last inputs") == (0 if runs_channels_last else 1)


def test_a_log_softmax_module_is_trained_on_its_nll(tmp_path, capsys):
    run = train(tmp_path, MnistExampleNet(), **{"train.epochs": 1})
    out = capsys.readouterr().out
    assert out.count("log-probabilities") == 1, out
    assert run.history[0]["train_loss"] < 2.5  # an NLL, not a cross-entropy of log-probs
    logits = torch.randn(6, 10)
    labels = torch.arange(6)
    task = ClassifyTask(label_smoothing=0.0)
    log_probs = F.log_softmax(logits, dim=1)
    assert torch.allclose(task.train_loss(log_probs, labels), F.nll_loss(log_probs, labels))
    assert task.log_probs is True
    other = ClassifyTask(label_smoothing=0.0)
    assert torch.allclose(other.train_loss(logits, labels), F.cross_entropy(logits, labels))
    assert other.log_probs is False


class WrongSizes(nn.Module):
    """Written for 28x28 MNIST: the first linear layer expects 320 features, digits give 80."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 3, padding=1)
        self.conv2 = nn.Conv2d(10, 20, 3, padding=1)
        self.fc1 = nn.Linear(320, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc1(torch.flatten(x, 1))


class TooFewOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_forward_that_fails_names_the_module_the_shape_and_what_to_try(tmp_path):
    with pytest.raises(KilnError) as caught:
        train(tmp_path, WrongSizes())
    message = str(caught.value)
    assert "WrongSizes.forward failed on an input of shape (2, 1, 8, 8)" in message
    assert "test_tutorial_models.py" in message and "self.fc1" in message  # the line that failed
    assert "data.size" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_outputs_of_the_wrong_shape_say_what_the_task_needs(tmp_path):
    with pytest.raises(KilnError, match=r"TooFewOutputs.*\(2, 2\).*\(2, 10\).*10 outputs"):
        train(tmp_path, TooFewOutputs())
