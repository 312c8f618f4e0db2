"""`majority` (self-consistency) and `best_of_n`: N sampled solutions per problem, then a choice.

The N chains of a problem share their root prompt KV; every step of all chains of all problems
is one policy call (and, for best_of_n, one PRM call).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrm_builtin.search.common import check_choice, finish, grow_chains


def sample_solutions(ctx, problems, n: int, score: bool):
    tree = ctx.new_tree(problems, num_actions=n, capacity=1 + n * (ctx.max_steps + 1))
    B = tree.batch_size
    exp = ctx.expand(tree, torch.zeros((B, 1), dtype=torch.int32), n, score=score)
    leaves = grow_chains(ctx, tree, exp.children[:, 0, :].clone(), score=score)
    return tree, [[int(x) for x in row if x >= 0] for row in leaves.tolist()]


@dataclass
class MajoritySearch:
    """Self-consistency: the most frequent final answer among n samples."""

    # Number of sampled solutions per problem.
    n: int = 4
    name: str = "majority"

    def run(self, ctx, problems):
        tree, leaves = sample_solutions(ctx, problems, self.n, score=False)
        out = finish(ctx, tree, problems, leaves, "majority")
        ctx.policy.release(tree)
        return out


@dataclass
class BestOfNSearch:
    """Best-of-N: n samples scored by the reward model; pick the best or vote weighted by score."""

    # Number of sampled solutions per problem.
    n: int = 4
    # "best" (highest aggregated score) or "weighted" (PRM-weighted voting) or "majority".
    choice: str = "weighted"
    name: str = "best_of_n"

    def __post_init__(self):
        check_choice(self.choice)

    def run(self, ctx, problems):
        if ctx.reward is None:
            raise ValueError("search=best_of_n needs a reward model: set reward=<name> "
                             "(or use search=majority)")
        tree, leaves = sample_solutions(ctx, problems, self.n, score=True)
        out = finish(ctx, tree, problems, leaves, self.choice)
        ctx.policy.release(tree)
        return out
