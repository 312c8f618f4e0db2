"""`greedy`: one chain per problem, the policy's most likely step at every step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrm_builtin.search.common import finish, grow_chains


@dataclass
class GreedySearch:
    """Greedy decoding step by step (k = 1, argmax); no reward model needed."""

    name: str = "greedy"

    def run(self, ctx, problems):
        from lrm_engine.models.sampling import SamplingConfig

        greedy = SamplingConfig(greedy=True)
        tree = ctx.new_tree(problems, num_actions=1, capacity=ctx.max_steps + 2)
        B = tree.batch_size
        roots = torch.zeros((B, 1), dtype=torch.int32)
        saved = ctx.sampling
        ctx.sampling = greedy
        try:
            exp = ctx.expand(tree, roots, 1, score=False)
            leaves = grow_chains(ctx, tree, exp.children[..., 0].clone(), score=False)
        finally:
            ctx.sampling = saved
        out = finish(ctx, tree, problems, [[int(leaves[b, 0])] for b in range(B)], "best")
        ctx.policy.release(tree)
        return out
