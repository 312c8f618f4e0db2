"""AUROC: golden values computed by hand (ties count one half), edge cases."""

from __future__ import annotations

import math
import random

import pytest

from lrm_engine.metrics import auroc, binary_accuracy


def test_auroc_golden_with_ties():
    # positives: 0.9, 0.8, 0.3   negatives: 0.8, 0.8, 0.1
    # 0.9 beats all three negatives            -> 3
    # 0.8 ties 0.8, ties 0.8, beats 0.1         -> 0.5 + 0.5 + 1 = 2
    # 0.3 loses to 0.8 twice, beats 0.1         -> 1
    # AUROC = (3 + 2 + 1) / (3 * 3) = 2/3
    scores = [0.9, 0.8, 0.8, 0.3, 0.8, 0.1]
    labels = [1, 1, 0, 1, 0, 0]
    assert auroc(scores, labels) == pytest.approx(2 / 3, abs=1e-12)
    # bools and any order give the same value
    order = [5, 2, 0, 4, 1, 3]
    assert auroc([scores[i] for i in order], [bool(labels[i]) for i in order]) == pytest.approx(2 / 3)


def test_auroc_simple_cases():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [1, 0, 1]) == 0.5  # all tied
    # one positive between two negatives: beats one of two -> 1/2
    assert auroc([0.2, 0.5, 0.7], [0, 1, 0]) == 0.5
    # 2 positives, 1 negative, one tie: (1 + 0.5) / 2
    assert auroc([0.4, 0.4, 0.9], [0, 1, 1]) == 0.75


def test_auroc_matches_pairwise_definition_on_random_ties():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 40)
        s = [rng.choice([0.1, 0.2, 0.3, 0.5, 0.9]) for _ in range(n)]
        y = [rng.random() < 0.4 for _ in range(n)]
        if all(y) or not any(y):
            continue
        pos = [a for a, l in zip(s, y) if l]
        neg = [a for a, l in zip(s, y) if not l]
        want = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
        assert auroc(s, y) == pytest.approx(want, abs=1e-12)


def test_auroc_edge_cases():
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    assert math.isnan(auroc([], []))
    with pytest.raises(ValueError, match="2 scores but 3 labels"):
        auroc([0.1, 0.2], [1, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([float("nan"), 0.2], [1, 0])


def test_binary_accuracy():
    assert binary_accuracy([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == 0.5
    assert math.isnan(binary_accuracy([], []))
