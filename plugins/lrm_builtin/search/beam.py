"""`beam`: step-level beam search scored by the PRM.

Each iteration the kept beams (n // beam_width per problem) expand beam_width children each, so
n candidates per problem are scored per step; finished candidates are set aside, the best
unfinished ones (by aggregated path score, `topk_per_tree`) become the next beams — duplicate
sibling steps (the same string sampled twice) count once. One policy
call and one PRM call per iteration for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrm_builtin.search.common import check_choice, duplicate_siblings, finish, terminal_nodes


@dataclass
class BeamSearch:
    """PRM-guided step-level beam search."""

    # Candidates scored per step per problem (the "N" of beam@N).
    n: int = 4
    # Children per kept beam; n // beam_width beams are kept (at least 1).
    beam_width: int = 4
    # How the final answer is chosen among finished beams: best | majority | weighted.
    choice: str = "best"
    name: str = "beam"

    def __post_init__(self):
        check_choice(self.choice)
        if self.n < 1 or self.beam_width < 1:
            raise ValueError("search.n and search.beam_width must be >= 1")

    def run(self, ctx, problems):
        if ctx.reward is None:
            raise ValueError("search=beam needs a reward model: set reward=<name>")
        width = min(self.beam_width, self.n)
        keep = max(1, self.n // width)
        A = max(self.n, width)
        tree = ctx.new_tree(problems, num_actions=A, capacity=1 + self.n * (ctx.max_steps + 1))
        B = tree.batch_size
        exp = ctx.expand(tree, torch.zeros((B, 1), dtype=torch.int32), self.n)
        cand = exp.children.view(B, -1)
        for depth in range(ctx.max_steps):
            ok = cand >= 0
            term = tree.terminal[torch.arange(B)[:, None], cand.clamp_min(0).long()] & ok
            # A sibling that repeats an earlier sibling's exact step is not a second beam.
            alive = ok & ~term & ~duplicate_siblings(ctx, tree, cand)
            if not bool(alive.any()) or depth == ctx.max_steps - 1:
                break
            scores = ctx.path_scores(tree).gather(1, cand.clamp_min(0).long())
            _, idx = ctx.ops.topk_per_tree(scores.contiguous(), keep, alive.contiguous())
            beams = torch.where(idx >= 0, cand.gather(1, idx.clamp_min(0).long()), -1)
            exp = ctx.expand(tree, beams.to(torch.int32), width)
            cand = exp.children.view(B, -1)
        # Every node is created as a candidate: the finished ones are the tree's terminal nodes.
        finished = terminal_nodes(tree)
        # Problems with no finished beam fall back to their last candidates.
        for b in range(B):
            if not finished[b]:
                finished[b] = [int(x) for x in cand[b].tolist() if x >= 0]
        out = finish(ctx, tree, problems, finished, self.choice)
        ctx.policy.release(tree)
        return out
