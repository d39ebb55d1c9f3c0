"""Metrics against hand-computed values and scikit-learn, on small tensors."""

from __future__ import annotations

import pytest
import torch
from sklearn import metrics as skm

from kiln.tasks.classify.metrics import classification_metrics, top_k_for

CLASSES = [f"c{i}" for i in range(7)]


def logits_from_probs(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly `probs` (up to float rounding)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


@pytest.fixture
def seven_classes() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(70) % 7
    logits = torch.randn(70, 7, generator=g)
    logits[torch.arange(70), labels] += 1.0  # better than chance, not perfect
    return logits, labels


def test_accuracy_and_f1_match_scikit_learn(seven_classes):
    logits, labels = seven_classes
    m = classification_metrics(logits, labels, CLASSES)
    y, p = labels.numpy(), logits.argmax(1).numpy()
    assert m["samples"] == 70
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p), abs=1e-6)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, p, average="macro"), abs=1e-6)
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(y, p, average="weighted"), abs=1e-6)
    assert m["precision_macro"] == pytest.approx(
        skm.precision_score(y, p, average="macro", zero_division=0), abs=1e-6
    )
    assert m["recall_weighted"] == pytest.approx(
        skm.recall_score(y, p, average="weighted"), abs=1e-6
    )
    per_f1 = skm.f1_score(y, p, average=None)
    assert [row["f1"] for row in m["per_class"]] == pytest.approx(per_f1, abs=1e-6)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, p).tolist()
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert m["loss"] == pytest.approx(expected_loss, abs=1e-6)


def test_top5_accuracy_matches_scikit_learn(seven_classes):
    logits, labels = seven_classes
    m = classification_metrics(logits, labels, CLASSES)
    expected = skm.top_k_accuracy_score(labels.numpy(), logits.numpy(), k=5, labels=range(7))
    assert m["top5_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert m["accuracy"] <= m["top5_accuracy"] <= 1.0


def test_top_k_by_hand_with_three_classes():
    # true class ranks 1st, 2nd, 3rd and 2nd: top-1 = 1/4, top-2 = 3/4
    logits = torch.tensor([[3.0, 2, 1], [2, 3, 1], [3, 2, 1], [1, 2, 3]])
    labels = torch.tensor([0, 0, 2, 1])
    m = classification_metrics(logits, labels, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.25)
    assert m["top2_accuracy"] == pytest.approx(0.75)
    assert "top5_accuracy" not in m


def test_top_k_choice():
    assert [top_k_for(n) for n in (2, 3, 5, 6, 1000)] == [None, 2, 2, 5, 5]
    m = classification_metrics(torch.tensor([[2.0, 1], [1, 2]]), torch.tensor([0, 1]), ["a", "b"])
    assert not any(key.startswith("top") for key in m)


def test_ece_is_zero_for_a_confident_correct_model():
    labels = torch.arange(20) % 4
    logits = torch.nn.functional.one_hot(labels, 4).float() * 100.0
    m = classification_metrics(logits, labels, list("abcd"))
    assert m["accuracy"] == 1.0
    assert m["ece"] == pytest.approx(0.0, abs=1e-6)


def test_ece_of_an_overconfident_model_by_hand():
    # Two confidence groups in separate bins:
    #   0.9 confident, 2 of 2 right:  |0.9 - 1.0| = 0.1, weight 2/6
    #   0.7 confident, 1 of 4 right:  |0.7 - 0.25| = 0.45, weight 4/6
    # ECE = 2/6 * 0.1 + 4/6 * 0.45 = 0.3333...
    probs = [[0.9, 0.1]] * 2 + [[0.7, 0.3]] * 4
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    m = classification_metrics(logits_from_probs(probs), labels, ["a", "b"])
    assert m["ece"] == pytest.approx(2 / 6 * 0.1 + 4 / 6 * 0.45, abs=1e-5)


def test_ece_of_one_bin_by_hand():
    # every sample 0.9 confident, half of them right: ECE = |0.9 - 0.5| = 0.4
    probs = [[0.9, 0.05, 0.05]] * 4
    m = classification_metrics(logits_from_probs(probs), torch.tensor([0, 1, 0, 2]), list("abc"))
    assert m["ece"] == pytest.approx(0.4, abs=1e-5)


def test_the_scores_match_torchmetrics_with_classes_missing_from_truth_or_predictions():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(1)
    k = 8
    labels = torch.randint(0, 5, (60,), generator=g)  # classes 5, 6, 7 never true
    logits = torch.randn(60, k, generator=g) * 2
    logits[:, 7] -= 100  # and class 7 never predicted either
    m = classification_metrics(logits, labels, [str(i) for i in range(k)])
    preds = logits.argmax(1)
    for average in ("macro", "weighted"):
        for name, fn in (("precision", tm.multiclass_precision), ("recall", tm.multiclass_recall),
                         ("f1", tm.multiclass_f1_score)):  # fmt: skip
            expected = fn(preds, labels, num_classes=k, average=average)
            assert m[f"{name}_{average}"] == pytest.approx(float(expected), abs=1e-5)
    top5 = tm.multiclass_accuracy(logits, labels, num_classes=k, top_k=5, average="micro")
    assert m["top5_accuracy"] == pytest.approx(float(top5), abs=1e-6)
    ece = tm.multiclass_calibration_error(logits.softmax(1), labels, num_classes=k, n_bins=15)
    assert m["ece"] == pytest.approx(float(ece), abs=1e-5)
