"""``orm``: an outcome reward model — one sequence-level score per finished solution.

:class:`OutcomeRM` wraps one of the incremental heads (``value_head``: sigmoid head,
``prm_head``: two-class head, ``prm_token``: good/bad token logits) and evaluates it **only at
the last token of a terminal node** (the final step, with the step tag when the model uses one):
that hidden state has attended to the whole solution, so the head's output there is a score of
the whole sequence. Non-terminal nodes are not run at all; they get ``nonterminal`` (NaN by
default, so path aggregates skip them and a finished path's aggregate is exactly its ORM score
under every aggregation — min / prod / last / mean; or a number such as 0.5 for a neutral
score, which then enters the aggregates).

Cost. Reuses the incremental machinery (:class:`~lrm_engine.rewards.incremental.IncrementalPRM`):
for a terminal node the path root..parent is not resident (nothing scored the intermediate
steps), so it is encoded from the deepest resident prefix in one batched forward — for the first
finished solution of a tree that is a full forward of the finished path — and its segments go
into the ORM's KV store, so sibling solutions that share a prefix reuse it instead of
re-encoding it (``reward_tokens_reused``).
"""

from __future__ import annotations

import math

import torch


class OutcomeRM:
    """Scores terminal nodes with an inner head; non-terminal nodes get ``nonterminal``."""

    name = "orm"
    # Scores finished solutions only: SearchContext gives it terminal nodes, and searches that
    # rank unfinished paths (uses_step_scores) refuse it.
    scores_steps = False

    def __init__(self, inner, *, nonterminal: float = math.nan):
        self.inner = inner
        self.nonterminal = float(nonterminal)

    @property
    def counters(self):
        return getattr(self.inner, "counters", None)

    @property
    def last_counters(self):
        return getattr(self.inner, "last_counters", None)

    def release(self, tree) -> None:
        rel = getattr(self.inner, "release", None)
        if rel is not None:
            rel(tree)

    def score(self, tree, pairs, policy) -> torch.Tensor:
        pairs_t = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
        out = torch.full((pairs_t.shape[0],), self.nonterminal, dtype=torch.float32)
        if pairs_t.shape[0] == 0:
            return out
        term = tree.terminal[pairs_t[:, 0], pairs_t[:, 1]].to(torch.bool)
        if bool(term.any()):
            out[term] = self.inner.score(tree, pairs_t[term], policy).to(torch.float32)
        return out
