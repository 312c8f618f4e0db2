"""``pairwise``: a pairwise preference reward (LLaMA-Berry's PPRM) and Enhanced Borda Count.

The judge. :class:`LMPairJudge` renders ``template`` with the question and two solutions (A
first, B second) and reads the logits of the two answer tokens (``a_token`` / ``b_token``,
"A" / "B") at the position after the prompt: P(A better) = softmax over those two logits only
(one batched forward for all pairs, never a full-vocabulary softmax). With ``both_orders`` (the
default) every pair is also asked in swapped order and the two estimates are averaged,
P(i > j) = (P_A(i, j) + 1 - P_A(j, i)) / 2, which cancels the judge's position bias.

Enhanced Borda Count (:func:`enhanced_borda_count`, LLaMA-Berry, Zhang et al. 2024, §3.3):
local pairwise preferences -> a global ranking and a quantile score per solution.

1. Local preferences: M[i, j] = 1 when P(i > j) > ``threshold`` (0.5), i != j. Pairs never
   compared (NaN) give no edge.
2. Transitive closure (Floyd–Warshall): if i > k and k > j then i > j. This fills in pairs that
   were never compared and makes every member of a preference cycle beat every other member.
3. Borda count: B[i] = number of j != i with C[i, j] = 1 (wins in the closure).
4. Ranking by B, descending. Ties (they come from cycles, where the closure cannot separate
   solutions) are re-ranked by the soft Borda count sum_j P(i > j) (``tie_break="soft"``), then by
   index; ``tie_break="none"`` lets tied solutions share their best rank.
5. Global quantile score Q_g(i) = 1 - rank(i) / n with 0-based ranks: the best solution gets 1,
   the worst 1/n.

As a RewardModel (``score(tree, pairs, policy)``), the new nodes of each tree in one call are
compared with each other (all pairs, one batched judge call) and each gets its Q_g in that
group: a *relative* score (a lone node gets ``neutral``, 0.5). It fits searches that score a
set of candidates at once (best_of_n, beam); ``sr_mcts`` uses :meth:`PairwiseReward.compare`
directly over whole solutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

DEFAULT_TEMPLATE = (
    "Question: {question}\n"
    "Solution A:\n{a}\n"
    "Solution B:\n{b}\n"
    "Which solution is better, A or B? Answer: "
)

TIE_BREAKS = ("soft", "none")


@dataclass
class EBCResult:
    """What Enhanced Borda Count computes for n solutions."""

    # wins: [n, n] bool — local preference edges M (i beats j).
    wins: torch.Tensor
    # closure: [n, n] bool — transitive closure C of wins (diagonal cleared).
    closure: torch.Tensor
    # borda: [n] int64 — wins in the closure.
    borda: torch.Tensor
    # soft: [n] float32 — soft Borda count sum_j P(i > j) (NaN entries count 0).
    soft: torch.Tensor
    # rank: [n] int64 — 0-based global rank (0 = best).
    rank: torch.Tensor
    # quantile: [n] float32 — Q_g = 1 - rank / n.
    quantile: torch.Tensor
    # order: [n] int64 — solution indices best first.
    order: torch.Tensor


def transitive_closure(adj: torch.Tensor) -> torch.Tensor:
    """Floyd–Warshall reachability of a [n, n] bool adjacency matrix."""
    c = adj.clone().to(torch.bool)
    for k in range(c.shape[0]):
        c |= c[:, k:k + 1] & c[k:k + 1, :]
    return c


def enhanced_borda_count(pref, threshold: float = 0.5, tie_break: str = "soft") -> EBCResult:
    """Enhanced Borda Count of a [n, n] preference matrix P(i better than j) (see module doc)."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
    p = torch.as_tensor(pref, dtype=torch.float32)
    if p.dim() != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"preference matrix must be [n, n], got {tuple(p.shape)}")
    n = p.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    known = ~torch.isnan(p) & ~eye
    wins = known & (p > threshold)
    closure = transitive_closure(wins) & ~eye
    borda = closure.sum(1).to(torch.int64)
    soft = torch.where(known, p, torch.zeros_like(p)).sum(1)
    idx = torch.arange(n)
    if tie_break == "soft":
        order = sorted(range(n), key=lambda i: (-int(borda[i]), -float(soft[i]), i))
        rank = torch.empty(n, dtype=torch.int64)
        rank[torch.tensor(order, dtype=torch.int64)] = idx
    else:
        order = sorted(range(n), key=lambda i: (-int(borda[i]), i))
        rank = torch.tensor([int((borda > borda[i]).sum()) for i in range(n)], dtype=torch.int64)
    quantile = (1.0 - rank.to(torch.float32) / max(n, 1)).to(torch.float32)
    return EBCResult(wins=wins, closure=closure, borda=borda, soft=soft, rank=rank,
                     quantile=quantile, order=torch.tensor(order, dtype=torch.int64))


class LMPairJudge:
    """P(first solution better) from a causal LM's logits of two answer tokens."""

    def __init__(self, lm, *, a_token: str = "A", b_token: str = "B", template: str = DEFAULT_TEMPLATE):
        from lrm_engine.rewards.prompted import single_token

        self.lm = lm
        self.template = template
        self.ids = (single_token(lm.tokenizer, a_token, "a_token"), single_token(lm.tokenizer, b_token, "b_token"))
        if self.ids[0] == self.ids[1]:
            raise ValueError("a_token and b_token must be different tokens")

    def __call__(self, questions: Sequence[str], first: Sequence[str], second: Sequence[str]) -> torch.Tensor:
        prompts = [self.template.format(question=q, a=a, b=b) for q, a, b in zip(questions, first, second)]
        logits = self.lm.choice_logits(prompts, self.ids)
        return logits.softmax(-1)[:, 0] if logits.numel() else torch.empty(0)


class PairwiseReward:
    """Pairwise preference reward: ``compare``, ``preference_matrix``, ``rank``, and ``score``."""

    name = "pairwise"

    def __init__(self, judge: Callable[[Sequence[str], Sequence[str], Sequence[str]], torch.Tensor], *,
                 both_orders: bool = True, threshold: float = 0.5, tie_break: str = "soft",
                 neutral: float = 0.5, lm=None):
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
        self.judge = judge
        self.both_orders = bool(both_orders)
        self.threshold = float(threshold)
        self.tie_break = tie_break
        self.neutral = float(neutral)
        self.lm = lm
        self.comparisons = 0

    @property
    def counters(self):
        return self.lm.counters if self.lm is not None else None

    def compare(self, questions: Sequence[str], first: Sequence[str], second: Sequence[str]) -> torch.Tensor:
        """[P] float32 P(first[i] better than second[i]); one judge call (both orders batched)."""
        q, a, b = list(questions), list(first), list(second)
        if not q:
            return torch.empty(0)
        if not self.both_orders:
            self.comparisons += len(q)
            return torch.as_tensor(self.judge(q, a, b), dtype=torch.float32)
        self.comparisons += 2 * len(q)
        p = torch.as_tensor(self.judge(q + q, a + b, b + a), dtype=torch.float32)
        return 0.5 * (p[: len(q)] + 1.0 - p[len(q):])

    def preference_matrix(self, question: str, solutions: Sequence[str]) -> torch.Tensor:
        """[n, n] P(i better than j) over all pairs i < j (P[j, i] = 1 - P[i, j]; NaN diagonal)."""
        n = len(solutions)
        pref = torch.full((n, n), float("nan"))
        ij = [(i, j) for i in range(n) for j in range(i + 1, n)]
        if ij:
            p = self.compare([question] * len(ij), [solutions[i] for i, _ in ij], [solutions[j] for _, j in ij])
            for (i, j), x in zip(ij, p.tolist()):
                pref[i, j], pref[j, i] = x, 1.0 - x
        return pref

    def rank(self, question: str, solutions: Sequence[str]) -> EBCResult:
        return enhanced_borda_count(self.preference_matrix(question, solutions), self.threshold, self.tie_break)

    def score(self, tree, pairs, policy) -> torch.Tensor:
        """EBC quantile of each new node among the new nodes of its tree in this call."""
        pl = [(int(b), int(n)) for b, n in torch.as_tensor(pairs).reshape(-1, 2).tolist()]
        out = torch.full((len(pl),), self.neutral, dtype=torch.float32)
        groups: dict[int, list[int]] = {}
        for i, (b, _) in enumerate(pl):
            groups.setdefault(b, []).append(i)
        qs, fa, fb, where = [], [], [], []
        texts = {i: policy.text(tree, b, n) for i, (b, n) in enumerate(pl)}
        for b, members in groups.items():
            try:
                q = policy.text(tree, b, tree.ROOT, with_prompt=True)
            except TypeError:
                q = ""
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    qs.append(q)
                    fa.append(texts[members[x]])
                    fb.append(texts[members[y]])
                    where.append((b, x, y))
        p = self.compare(qs, fa, fb) if qs else torch.empty(0)
        mats = {b: torch.full((len(m), len(m)), float("nan")) for b, m in groups.items()}
        for (b, x, y), v in zip(where, p.tolist()):
            mats[b][x, y], mats[b][y, x] = v, 1.0 - v
        for b, members in groups.items():
            if len(members) < 2:
                continue
            q = enhanced_borda_count(mats[b], self.threshold, self.tie_break).quantile
            for x, i in enumerate(members):
                out[i] = q[x]
        return out
