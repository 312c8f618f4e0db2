"""`lookahead`: beam search whose candidates are scored after k further greedy steps.

Lookahead search as Snell et al. (2024) define it. Each round the kept beams expand
``beam_width`` sampled children each (``n`` candidates per problem at the first round, from
the root). Every candidate is then rolled out ``lookahead`` greedy steps (stopping early at the
end of a solution or at ``ctx.max_steps``); the PRM scores every step as it is generated, and a
candidate's score is the aggregated path score at the end of its look-ahead chain. The best
``n // beam_width`` candidates survive, and a survivor keeps only its first step, the candidate
itself: the next round samples its children from the candidate, not from the end of its chain.
The look-ahead steps only score; they are never part of a solution. A candidate whose own step
ends the solution is finished (its score is its own path's); a look-ahead chain that reaches
the end of a solution just scores its candidate. ``lookahead=0`` is plain beam search.

Tree. The look-ahead chain hangs under its candidate as ordinary nodes (their policy and PRM KV
are cached while they are generated and scored). A tree node is expanded once, with all its
children, so before a survivor samples its children its chain is unlinked from it
(``children_index`` reset): the chain's nodes keep their slots and parent pointers (a tree
export shows them under the candidate) but are on no candidate's path.

Per round: one policy + one PRM call for the candidates, then one of each per look-ahead step,
always for the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrm_builtin.search.common import check_choice, finish
from lrm_builtin.search.family_util import gather, greedy, is_terminal, leaves_lists, need_reward
from lrm_engine.core.tree import BatchedTree


def roll_greedy(ctx, tree, start: torch.Tensor, steps: int) -> torch.Tensor:
    """Extend each node of start [B, M] by up to ``steps`` greedy steps (one batched call per
    step); stop at terminals and at ctx.max_steps. Returns the chain ends [B, M]."""
    tip = start.clone()
    mode = greedy()
    for _ in range(steps):
        active = (tip >= 0) & ~is_terminal(tree, tip) & (gather(tree.depth, tip) < ctx.max_steps)
        if not bool(active.any()):
            break
        exp = ctx.expand(tree, torch.where(active, tip, -1), 1, sampling=mode)
        tip = torch.where(active & (exp.children[..., 0] >= 0), exp.children[..., 0], tip)
    return tip


def unlink_children(tree, nodes: torch.Tensor) -> None:
    """Forget the children of nodes [B, M] (-1 = none) so they can be expanded again; the
    children keep their slots (and parent pointers) but are no longer reachable from them."""
    ok = nodes >= 0
    if not bool(ok.any()):
        return
    bi, ji = ok.nonzero(as_tuple=True)
    tree.children_index[bi, nodes[bi, ji].long()] = BatchedTree.UNVISITED


@dataclass
class LookaheadSearch:
    """PRM beam search with k-step greedy look-ahead scoring (Snell et al. 2024)."""

    # Candidates scored per step per problem (the N of beam@N).
    n: int = 4
    # Children per kept beam; n // beam_width beams survive each round.
    beam_width: int = 4
    # Greedy steps rolled out past each candidate before the PRM scores it (0 = beam search).
    lookahead: int = 1
    # Final answer among finished candidates: best | majority | weighted.
    choice: str = "best"
    name: str = "lookahead"
    # Ranks unfinished paths by step scores (an outcome-only reward is refused).
    uses_step_scores = True

    def __post_init__(self):
        check_choice(self.choice)
        if self.n < 1 or self.beam_width < 1 or self.lookahead < 0:
            raise ValueError("search.n and search.beam_width must be >= 1, search.lookahead >= 0")

    def run(self, ctx, problems):
        need_reward(ctx, self.name)
        width = min(self.beam_width, self.n)
        keep = max(1, self.n // width)
        A = max(self.n, width)
        cap = 1 + self.n * (ctx.max_steps + 1) * (1 + self.lookahead)
        tree = ctx.new_tree(problems, num_actions=A, capacity=cap)
        B = tree.batch_size
        ar = torch.arange(B)[:, None]
        exp = ctx.expand(tree, torch.zeros((B, 1), dtype=torch.int32), self.n)
        cand = exp.children.view(B, -1)
        finished: list[list[int]] = [[] for _ in range(B)]
        last = cand  # the newest candidates that exist (the fallback at the step limit)
        while True:
            ok = cand >= 0
            if bool(ok.any()):
                last = cand
            term = is_terminal(tree, cand)
            for b, j in term.nonzero().tolist():
                finished[b].append(int(cand[b, j]))
            alive = ok & ~term & (gather(tree.depth, cand) < ctx.max_steps)
            if not bool(alive.any()):
                break
            tips = roll_greedy(ctx, tree, torch.where(alive, cand, -1), self.lookahead)
            scores = ctx.path_scores(tree)[ar, tips.clamp_min(0).long()]
            _, idx = ctx.ops.topk_per_tree(scores.contiguous(), keep, alive.contiguous())
            beams = torch.where(idx >= 0, cand.gather(1, idx.clamp_min(0).long()), -1)
            if self.lookahead:
                unlink_children(tree, beams)  # survivors keep their first step only
            exp = ctx.expand(tree, beams.to(torch.int32), width)
            cand = exp.children.view(B, -1)
        for b in range(B):  # no finished candidate (step limit): the newest unfinished ones
            if not finished[b]:
                finished[b] = leaves_lists(last[b: b + 1])[0]
        out = finish(ctx, tree, problems, finished, self.choice)
        ctx.policy.release(tree)
        return out
