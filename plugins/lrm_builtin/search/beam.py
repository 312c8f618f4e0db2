"""`beam`: step-level beam search scored by the PRM.

Each iteration the kept beams (n // beam_width per problem) expand beam_width children each, so
n candidates per problem are scored per step; finished candidates are set aside, the best
unfinished ones (by aggregated path score, `topk_per_tree`) become the next beams. One policy
call and one PRM call per iteration for the whole batch.

Duplicate siblings (the same step string sampled twice under one node; a confident policy
samples its favourite step most of the n times) are separate candidates, and with
``duplicates="keep"`` (default) separate beams: copies of the best prefix fill several of the
n // beam_width places, so that prefix gets the n samples of the next step — search-and-learn's
beam search (``filter_duplicates=False``). ``duplicates="drop"`` counts a repeated step once, so
the places go to the next distinct (lower-scored) candidates and the best prefix gets only
beam_width samples per step, and a problem with fewer distinct candidates than places expands
fewer than n (10.2 of 16 after the root). On the embedded default (arith_hard, beam@16, width
4, the first 100 test problems, runtime.seed 0/1/2) keep scores 83/83/85% and drop 64/62/65%;
the independent search-and-learn-style implementation (bench/beam_peer.py) 86/83/85%: the
policy's errors concentrate on hard steps where one wrong string takes most of the
probability, and 4 samples of the right prefix often all miss.

``stats`` (filled by every ``run``): per problem id, per step, the candidates scored
(``sampled``), their distinct step strings (``distinct``), the candidates that finished
(``finished``) and the distinct beams kept (``kept``) — the diagnostics of bench/beam_peer.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lrm_builtin.search.common import check_choice, finish, first_copies, terminal_nodes

# What duplicate siblings are to the beam (see the module docstring).
DUPLICATES = ("keep", "drop")


@dataclass
class BeamSearch:
    """PRM-guided step-level beam search."""

    # Candidates scored per step per problem (the "N" of beam@N).
    n: int = 4
    # Children per kept beam; n // beam_width beams are kept (at least 1).
    beam_width: int = 4
    # How the final answer is chosen among finished beams: best | majority | weighted.
    choice: str = "best"
    # Sibling candidates with the same step string: keep (each copy may be a beam) | drop
    # (count once).
    duplicates: str = "keep"
    name: str = "beam"
    # Ranks unfinished paths by step scores (an outcome-only reward is refused).
    uses_step_scores = True
    # Per-problem, per-step diagnostics of the runs so far (see the module docstring).
    stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        check_choice(self.choice)
        if self.n < 1 or self.beam_width < 1:
            raise ValueError("search.n and search.beam_width must be >= 1")
        if self.duplicates not in DUPLICATES:
            raise ValueError(f"search.duplicates must be one of {', '.join(DUPLICATES)}; "
                             f"got {self.duplicates!r}")

    def run(self, ctx, problems):
        if ctx.reward is None:
            raise ValueError("search=beam needs a reward model: set reward=<name>")
        width = min(self.beam_width, self.n)
        keep = max(1, self.n // width)
        A = max(self.n, width)
        tree = ctx.new_tree(problems, num_actions=A, capacity=1 + self.n * (ctx.max_steps + 1))
        B = tree.batch_size
        rows = torch.arange(B)[:, None]
        exp = ctx.expand(tree, torch.zeros((B, 1), dtype=torch.int32), self.n)
        cand = exp.children.view(B, -1)
        parent_key = torch.zeros(cand.shape, dtype=torch.long)  # the path class of each parent
        trace = []  # per step: [B, 4] (sampled, distinct, finished, kept)
        for depth in range(ctx.max_steps):
            ok = cand >= 0
            term = tree.terminal[rows, cand.clamp_min(0).long()] & ok
            # Candidates with the same path: the same step under copies of one prefix.
            first = first_copies(ctx, tree, cand, parent_key)
            unique = ok & (first == torch.arange(cand.shape[1])[None, :])
            alive = ok & ~term
            if self.duplicates == "drop":
                alive &= unique
            counts = [ok.sum(1), unique.sum(1), term.sum(1)]
            if not bool(alive.any()) or depth == ctx.max_steps - 1:
                trace.append(torch.stack(counts + [torch.zeros(B, dtype=torch.long)], 1))
                break
            scores = ctx.path_scores(tree).gather(1, cand.clamp_min(0).long())
            _, idx = ctx.ops.topk_per_tree(scores.contiguous(), keep, alive.contiguous())
            beams = torch.where(idx >= 0, cand.gather(1, idx.clamp_min(0).long()), -1)
            cls = torch.where(idx >= 0, first.gather(1, idx.clamp_min(0).long()), -1)
            trace.append(torch.stack(counts + [distinct(cls)], 1))
            exp = ctx.expand(tree, beams.to(torch.int32), width)
            cand = exp.children.view(B, -1)
            parent_key = cls.repeat_interleave(width, dim=1)
        self._record(problems, torch.stack(trace, 1))
        # Every node is created as a candidate: the finished ones are the tree's terminal nodes.
        finished = terminal_nodes(tree)
        # Problems with no finished beam fall back to their last candidates.
        for b in range(B):
            if not finished[b]:
                finished[b] = [int(x) for x in cand[b].tolist() if x >= 0]
        out = finish(ctx, tree, problems, finished, self.choice)
        ctx.policy.release(tree)
        return out

    def _record(self, problems, trace: torch.Tensor) -> None:
        """trace [B, steps, 4] -> self.stats[id] = {sampled, distinct, finished, kept: [steps]},
        each list cut after the problem's last step with candidates."""
        for prob, t in zip(problems, trace.tolist()):
            t = [s for s in t if s[0] > 0]
            self.stats[prob.id] = {key: [s[i] for s in t]
                                   for i, key in enumerate(("sampled", "distinct", "finished", "kept"))}


def distinct(keys: torch.Tensor) -> torch.Tensor:
    """[B] number of distinct keys >= 0 per row of keys [B, K]."""
    k = torch.sort(keys, dim=1).values
    new = torch.ones_like(k, dtype=torch.bool)
    new[:, 1:] = k[:, 1:] != k[:, :-1]
    return (new & (k >= 0)).sum(1)
