"""Evaluation metrics (plain Python / numpy; no torch).

``auroc(scores, labels)``: the area under the ROC curve, computed exactly as the Mann-Whitney
statistic,

    AUROC = (1 / (P * N)) * sum_{i positive} sum_{j negative} [s_i > s_j] + 0.5 * [s_i == s_j]

with P positives (label true) and N negatives: the probability that a random positive scores
above a random negative, ties counting one half. It is computed in O(n log n) from average
ranks (tied scores share the mean of their ranks), which gives exactly the formula above. With
only one class present AUROC is undefined and the function returns ``nan`` (callers report it as
``null``); NaN scores are rejected with ValueError.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def auroc(scores: Sequence[float], labels: Sequence[bool | int | float]) -> float:
    """AUROC of ``scores`` for binary ``labels`` (truthy = positive); ties count 1/2.

    Returns ``nan`` when all labels are of one class (or there are none). See the module
    docstring for the exact definition.
    """
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray([bool(v) for v in labels], dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"auroc: {s.size} scores but {y.size} labels")
    if np.isnan(s).any():
        raise ValueError("auroc: scores contain NaN")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values get the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    i = 0
    n = x.size
    while i < n:
        j = i
        while j + 1 < n and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def binary_accuracy(scores: Sequence[float], labels: Sequence[bool | int | float],
                    threshold: float = 0.5) -> float:
    """Share of items where ``score >= threshold`` agrees with the label; nan when empty."""
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray([bool(v) for v in labels], dtype=bool)
    if s.size == 0:
        return math.nan
    return float(((s >= threshold) == y).mean())
