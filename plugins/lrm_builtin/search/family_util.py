"""Small tensor helpers shared by the lookahead / dvts / mcts / tot searches.

Everything is batched over the B trees: node tensors are [B, M] int slots with -1 for "none".
"""

from __future__ import annotations

import torch


def greedy():
    """The sampling config of a greedy (argmax) step."""
    from lrm_engine.models.sampling import SamplingConfig

    return SamplingConfig(greedy=True)


def gather(field: torch.Tensor, nodes: torch.Tensor, fill=0):
    """field [B, N] read at nodes [B, M] (-1 -> ``fill``)."""
    ok = nodes >= 0
    out = torch.gather(field, 1, nodes.clamp_min(0).long())
    return torch.where(ok, out, torch.full_like(out, fill))


def is_terminal(tree, nodes: torch.Tensor) -> torch.Tensor:
    """[B, M] bool: the node exists and ends a solution."""
    return gather(tree.terminal, nodes, False) & (nodes >= 0)


def scores_at(ctx, tree, nodes: torch.Tensor, evaluator: str = "aggregate") -> torch.Tensor:
    """[B, M] float32 evaluator value of nodes: the path aggregate (ctx.aggregation) or the
    last step's score; NaN where there is no node."""
    field = ctx.path_scores(tree) if evaluator == "aggregate" else tree.step_score
    return gather(field, nodes, float("nan"))


def check_evaluator(name: str) -> str:
    if name not in ("aggregate", "last"):
        raise ValueError(f"unknown evaluator {name!r}; choose one of: aggregate, last")
    return name


def leaves_lists(nodes: torch.Tensor) -> list[list[int]]:
    """[B, M] -> per-tree lists of the existing slots."""
    return [[int(x) for x in row if x >= 0] for row in nodes.tolist()]


def need_reward(ctx, name: str) -> None:
    if ctx.reward is None:
        raise ValueError(f"search={name} needs a reward model: set reward=<name>")
