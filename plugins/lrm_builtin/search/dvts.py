"""`dvts`: diverse verifier tree search (Beeching et al., HF "search-and-learn").

The n candidates of a problem are split into n // beam_width independent subtrees. The root is
expanded once with n children, beam_width per subtree; from then on each subtree is a greedy PRM
beam: its one beam expands beam_width children, and the best child by aggregated PRM score
(`topk_per_tree` over [B * subtrees, beam_width]) becomes the next beam. A subtree ends when
its best child ends a solution. Subtrees never compete with each other, which keeps the final
solutions diverse; the final answer is chosen among the subtrees' solutions (`choice`).

One policy call and one PRM call per step for every subtree of every problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrm_builtin.search.common import check_choice, finish
from lrm_builtin.search.family_util import gather, is_terminal, need_reward


@dataclass
class DVTSSearch:
    """Diverse verifier tree search: n // beam_width independent greedy PRM beams."""

    # Candidates scored per step per problem (the N); n // beam_width subtrees.
    n: int = 4
    # Children per subtree per step (the W); the subtree keeps its best one.
    beam_width: int = 2
    # Final answer among the subtrees' solutions: best | majority | weighted.
    choice: str = "best"
    name: str = "dvts"
    # Ranks unfinished paths by step scores (an outcome-only reward is refused).
    uses_step_scores = True

    def __post_init__(self):
        check_choice(self.choice)
        if self.n < 1 or self.beam_width < 1:
            raise ValueError("search.n and search.beam_width must be >= 1")

    def run(self, ctx, problems):
        need_reward(ctx, self.name)
        W = min(self.beam_width, self.n)
        S = max(1, self.n // W)
        tree = ctx.new_tree(problems, num_actions=S * W, capacity=1 + S * W * (ctx.max_steps + 1))
        B = tree.batch_size
        exp = ctx.expand(tree, torch.zeros((B, 1), dtype=torch.int32), S * W)
        cand = exp.children.view(B, S, W)
        done = torch.full((B, S), -1, dtype=torch.int32)  # each subtree's solution
        last = torch.full((B, S), -1, dtype=torch.int32)  # each subtree's latest beam
        while True:
            flat = cand.reshape(B, S * W)
            sc = gather(ctx.path_scores(tree), flat, float("nan")).view(B * S, W)
            _, idx = ctx.ops.topk_per_tree(sc.contiguous(), 1, (flat >= 0).view(B * S, W).contiguous())
            best = torch.where(idx >= 0, cand.view(B * S, W).gather(1, idx.clamp_min(0).long()),
                               -1).view(B, S).to(torch.int32)
            last = torch.where(best >= 0, best, last)
            term = is_terminal(tree, best)
            done = torch.where(term, best, done)
            beams = torch.where((best >= 0) & ~term & (gather(tree.depth, best) < ctx.max_steps),
                                best, -1)
            if not bool((beams >= 0).any()):
                break
            cand = ctx.expand(tree, beams, W).children  # [B, S, W]
        # A subtree cut by the step limit contributes its last beam.
        leaves = torch.where(done >= 0, done, last)
        out = finish(ctx, tree, problems, [[int(x) for x in row if x >= 0] for row in leaves.tolist()],
                     self.choice)
        ctx.policy.release(tree)
        return out
