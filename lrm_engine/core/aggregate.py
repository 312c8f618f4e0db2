"""Aggregation of step scores along a path: min / prod / last / mean.

Read from the O(1) incremental path aggregates that `backup` maintains on the tree, so scoring
a path never walks it.
"""

from __future__ import annotations

import torch

from lrm_engine.core.tree import BatchedTree

AGGREGATIONS = ("min", "prod", "last", "mean")


def check_aggregation(name: str) -> str:
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown step-score aggregation {name!r}; choose one of: {', '.join(AGGREGATIONS)}")
    return name


def path_scores(tree: BatchedTree, how: str) -> torch.Tensor:
    """[B, N] float32 aggregated step score of every node's path (NaN where nothing is scored)."""
    check_aggregation(how)
    scored = tree.path_len > 0
    if how == "min":
        out = tree.path_min
    elif how == "prod":
        out = torch.exp(tree.path_sum_log)
    elif how == "last":
        out = tree.path_last
    else:
        out = tree.path_sum / tree.path_len.clamp_min(1).to(torch.float32)
    return torch.where(scored, out, torch.full_like(out, float("nan")))
