import numpy as np
import pytest

from catdog.training.metrics import choose_threshold, classification_metrics, wilson_interval


def test_wilson_interval_matches_the_textbook_value():
    low, high = wilson_interval(81, 100)
    assert low == pytest.approx(0.7222, abs=1e-4) and high == pytest.approx(0.8749, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_metrics_on_a_known_example():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.4, 0.6, 0.35, 0.8, 0.9])
    m = classification_metrics(y, p, 0.5)
    assert m["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-6) and m["recall"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["roc_auc"] == pytest.approx(7 / 9, abs=1e-6)
    assert m["n"] == 6 and m["threshold"] == 0.5
    assert m["accuracy_ci95"]["low"] < m["accuracy"] < m["accuracy_ci95"]["high"]


def test_threshold_is_fixed_or_chosen_to_maximise_the_score():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.9])
    assert choose_threshold(y, p, "fixed", 0.5) == 0.5
    best = choose_threshold(y, p, "accuracy")
    assert 0.2 < best <= 0.3
    assert classification_metrics(y, p, best)["accuracy"] == 1.0
    assert 0.2 < choose_threshold(y, p, "f1") <= 0.3


def test_threshold_ties_prefer_the_one_closest_to_one_half():
    y = np.array([0, 1])
    p = np.array([0.1, 0.9])
    assert choose_threshold(y, p, "accuracy") == 0.5
