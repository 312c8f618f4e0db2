"""`tot_bfs`: Tree-of-Thoughts breadth-first search (Yao et al. 2023) with the PRM as evaluator.

A thought is a reasoning step. Level by level, the t kept states of every problem each propose
b // t next thoughts (b proposals per level; the root proposes all b); the evaluator scores every
proposal (the PRM: aggregated path score, or the new step's own score with
``evaluator=last``); the best t unfinished proposals (`topk_per_tree`) are kept for the next
level. Proposals that end a solution are set aside; the final answer is chosen among them
(`choice`). The depth limit is ``ctx.max_steps``.

One policy call and one PRM call per level for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrm_builtin.search.common import check_choice, finish, terminal_nodes
from lrm_builtin.search.family_util import (check_evaluator, gather, is_terminal, leaves_lists,
                                             need_reward, scores_at)


@dataclass
class ToTBFSSearch:
    """Tree-of-Thoughts BFS: keep the best t of b proposals per level."""

    # b: proposals (new thoughts) per level per problem.
    proposals: int = 4
    # t: states kept per level (each proposes proposals // keep thoughts).
    keep: int = 2
    # State value: aggregate (ctx aggregation of the path's step scores) or last (newest step).
    evaluator: str = "aggregate"
    # Final answer among finished solutions: best | majority | weighted.
    choice: str = "best"
    name: str = "tot_bfs"
    # Ranks unfinished paths by step scores (an outcome-only reward is refused).
    uses_step_scores = True

    def __post_init__(self):
        check_choice(self.choice)
        check_evaluator(self.evaluator)
        if self.proposals < 1 or self.keep < 1:
            raise ValueError("search.proposals and search.keep must be >= 1")

    def run(self, ctx, problems):
        need_reward(ctx, self.name)
        t = min(self.keep, self.proposals)
        per = max(1, self.proposals // t)
        A = max(self.proposals, per)
        tree = ctx.new_tree(problems, num_actions=A, capacity=1 + t * per * (ctx.max_steps + 1) + A)
        B = tree.batch_size
        cand = ctx.expand(tree, torch.zeros((B, 1), dtype=torch.int32), self.proposals).children.view(B, -1)
        while True:
            term = is_terminal(tree, cand)
            alive = (cand >= 0) & ~term & (gather(tree.depth, cand) < ctx.max_steps)
            if not bool(alive.any()):
                break
            value = scores_at(ctx, tree, cand, self.evaluator)
            _, idx = ctx.ops.topk_per_tree(value.contiguous(), t, alive.contiguous())
            states = torch.where(idx >= 0, cand.gather(1, idx.clamp_min(0).long()), -1)
            cand = ctx.expand(tree, states.to(torch.int32), per).children.view(B, -1)
        finished = terminal_nodes(tree)  # every node was created as a candidate
        for b in range(B):
            if not finished[b]:
                finished[b] = leaves_lists(cand[b: b + 1])[0]
        out = finish(ctx, tree, problems, finished, self.choice)
        ctx.policy.release(tree)
        return out
