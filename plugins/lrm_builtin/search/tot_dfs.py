"""`tot_dfs`: Tree-of-Thoughts depth-first search (Yao et al. 2023) with the PRM as evaluator.

Every problem keeps its own DFS stack (a few ints). Each iteration pops one state per problem,
proposes ``proposals`` next thoughts, and the evaluator (the PRM: aggregated path score, or the
new step's own score with ``evaluator=last``) values them. Thoughts valued below ``threshold``
are pruned; a surviving thought that ends a solution is a solution; the others are pushed so the
best is explored next (`topk_per_tree` orders them). When every child of a state is pruned the
search backtracks to the next state on the stack. A problem stops after ``solutions``
solutions, an empty stack, or ``step_limit`` expanded states; the depth limit is
``ctx.max_steps``. A problem with no solution above the threshold falls back to every finished
solution in its tree (or, failing that, its unexpanded leaves).

One policy call and one PRM call per iteration for the whole batch (one state per problem).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrm_builtin.search.common import check_choice, finish
from lrm_builtin.search.family_util import check_evaluator, need_reward, scores_at


@dataclass
class ToTDFSSearch:
    """Tree-of-Thoughts DFS: value threshold, backtracking, step limit."""

    # Thoughts proposed per expanded state.
    proposals: int = 3
    # Thoughts valued below this are pruned (never explored); in [0, 1] for a PRM.
    threshold: float = 0.5
    # Most states expanded per problem (the DFS step limit).
    step_limit: int = 16
    # Stop a problem after this many solutions above the threshold (more: vote with `choice`).
    solutions: int = 1
    # State value: aggregate (ctx aggregation of the path's step scores) or last (newest step).
    evaluator: str = "aggregate"
    # Final answer among the solutions found: best | majority | weighted.
    choice: str = "best"
    name: str = "tot_dfs"
    # Ranks unfinished paths by step scores (an outcome-only reward is refused).
    uses_step_scores = True

    def __post_init__(self):
        check_choice(self.choice)
        check_evaluator(self.evaluator)
        if self.proposals < 1 or self.step_limit < 1 or self.solutions < 1:
            raise ValueError("search.proposals, search.step_limit and search.solutions must be >= 1")

    def run(self, ctx, problems):
        need_reward(ctx, self.name)
        k = self.proposals
        tree = ctx.new_tree(problems, num_actions=k, capacity=1 + k * (self.step_limit + 1))
        B = tree.batch_size
        stacks: list[list[int]] = [[0] for _ in range(B)]
        found: list[list[int]] = [[] for _ in range(B)]
        used = [0] * B
        # The states each problem expanded, in DFS order (read by tests and analysis).
        self.expanded: list[list[int]] = [[] for _ in range(B)]
        while True:
            cur = torch.full((B, 1), -1, dtype=torch.int32)
            for b in range(B):
                if stacks[b] and len(found[b]) < self.solutions and used[b] < self.step_limit:
                    cur[b, 0] = stacks[b].pop()
                    used[b] += 1
                    self.expanded[b].append(int(cur[b, 0]))
            if not bool((cur >= 0).any()):
                break
            kids = ctx.expand(tree, cur, k).children.view(B, k)
            value = scores_at(ctx, tree, kids, self.evaluator)
            keep = (kids >= 0) & (value >= self.threshold)  # NaN compares False: pruned
            term = tree.terminal.gather(1, kids.clamp_min(0).long()) & keep
            deep = tree.depth.gather(1, kids.clamp_min(0).long()) >= ctx.max_steps
            push = keep & ~term & ~deep
            # Best first: order the pushable children by value, descending.
            _, order = ctx.ops.topk_per_tree(value.contiguous(), k, push.contiguous())
            ordered = torch.where(order >= 0, kids.gather(1, order.clamp_min(0).long()), -1)
            for b, j in term.nonzero().tolist():
                found[b].append(int(kids[b, j]))
            for b, row in enumerate(ordered.tolist()):
                stacks[b].extend(x for x in reversed(row) if x >= 0)  # best on top
        leaves = []
        for b in range(B):
            if found[b]:
                leaves.append(found[b])
                continue
            n = int(tree.num_nodes[b])
            term = tree.terminal[b, 1:n].nonzero().squeeze(1) + 1
            if term.numel() == 0:  # no solution at all: the unexpanded leaves
                term = ((tree.children_index[b, 1:n] < 0).all(-1)).nonzero().squeeze(1) + 1
            leaves.append([int(x) for x in term.tolist()])
        out = finish(ctx, tree, problems, leaves, self.choice)
        ctx.policy.release(tree)
        return out
