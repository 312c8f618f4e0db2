"""`compute_optimal`: difficulty-adaptive allocation of a token budget (Snell et al., 2024).

1. Probe. ``probe_n`` solutions per problem are sampled and scored by the PRM (one batched
   best-of-N pass). Difficulty of a question = 1 - mean aggregated PRM score of its probe
   solutions (``search_run.aggregation``); the spread (std) is reported too. Problems whose
   difficulty is at most ``easy_threshold`` are *easy*, the others *hard*.
2. Budget. The batch's total budget is ``n`` solutions' worth of tokens per problem (the cost a
   uniform best-of-``n`` would spend): ``budget = B * n * c``, with c the measured tokens
   (policy + PRM, computed) of one probe solution; the probe's own tokens are spent from it. The
   remaining tokens, in solution units ``S = floor(remaining / c)``, are spread across problems
   in proportion to ``difficulty + min_weight`` (largest remainders), so harder questions get
   more compute.
3. Search kind per question (Snell et al.: sampling in parallel suits easy questions, PRM-guided
   tree search suits hard ones): easy -> best-of-N with the probe solutions reused plus the extra
   samples (weighted vote, ``easy_choice``); hard -> step-level ``beam`` with ``n`` = its share
   (at least ``min_beam_n``) and ``beam_width``, its answer the best-scored of the beam's
   finished solutions and the probe solutions (the probe is paid for from the budget, so its
   solutions stay candidates of either kind; ``pass``: probe / extra / beam). Problems of one
   kind and one share run as one batch.

Measured on the scripted world of tests/test_sr_mcts.py (one easy question whose PRM over-rates a
wrong first step, one hard question whose correct path is not the policy's most likely one) at
n = 4: uniform best-of-4 solves the easy one only, uniform beam@4 the hard one only;
compute_optimal solves both with no more tokens (48 vs 48 for best-of-4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lrm_builtin.search.beam import BeamSearch
from lrm_builtin.search.common import check_choice, choose
from lrm_builtin.search.sampled import sample_solutions
from lrm_engine.core.interfaces import SearchResult


def _tokens(counters: dict[str, int]) -> int:
    return int(counters.get("policy_tokens_computed", 0)) + int(counters.get("reward_tokens_computed", 0))


def spread(total: int, weights: list[float]) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainders; ties: first)."""
    if total <= 0 or not weights:
        return [0] * len(weights)
    s = sum(weights)
    raw = [total * w / s for w in weights] if s > 0 else [total / len(weights)] * len(weights)
    base = [int(math.floor(x)) for x in raw]
    left = total - sum(base)
    for i in sorted(range(len(raw)), key=lambda i: (-(raw[i] - base[i]), i))[:left]:
        base[i] += 1
    return base


@dataclass
class ComputeOptimalSearch:
    """Probe difficulty, then best-of-N for easy and beam for hard questions (see module doc)."""

    # Budget: n solutions' worth of tokens per problem (uniform best-of-n's cost).
    n: int = 16
    # Probe solutions per problem (difficulty estimate; reused by easy questions).
    probe_n: int = 2
    # Difficulty (1 - mean probe PRM score) at or below which a question is easy.
    easy_threshold: float = 0.5
    # Added to every difficulty before spreading the budget (easy questions still get some).
    min_weight: float = 0.1
    # Children per beam in the hard questions' beam search.
    beam_width: int = 4
    # Smallest beam n for a hard question (even if its share is smaller).
    min_beam_n: int = 2
    # Final answer of easy questions: weighted, best or majority.
    easy_choice: str = "weighted"
    name: str = "compute_optimal"
    # Ranks unfinished paths by step scores in its beam search (an outcome-only reward is refused).
    uses_step_scores = True

    def __post_init__(self):
        check_choice(self.easy_choice)
        if self.n < 1 or self.probe_n < 1 or self.beam_width < 1 or self.min_beam_n < 1:
            raise ValueError("search.n, probe_n, beam_width and min_beam_n must be >= 1")

    def run(self, ctx, problems):
        if ctx.reward is None:
            raise ValueError("search=compute_optimal needs a reward model (PRM): set reward=<name>")
        B = len(problems)
        before = ctx.counters()
        # 1. probe
        tree, leaves = sample_solutions(ctx, problems, self.probe_n, score=True)
        scores = ctx.path_scores(tree)
        probe: list[list[dict]] = []
        difficulty, spread_ = [], []
        for b in range(B):
            cands = []
            for n in leaves[b]:
                text = ctx.text(tree, b, n)
                s = float(scores[b, n])
                cands.append({"answer": ctx.answer(text), "score": None if math.isnan(s) else s,
                              "text": text, "pass": "probe"})
            vals = [c["score"] for c in cands if c["score"] is not None]
            mean = sum(vals) / len(vals) if vals else 0.0
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)) if vals else 0.0
            probe.append(cands)
            difficulty.append(1.0 - mean)
            spread_.append(sd)
        ctx.policy.release(tree)
        release = getattr(ctx.reward, "release", None)
        if callable(release):
            release(tree)
        spent = _tokens(ctx.counters()) - _tokens(before)
        per_solution = max(1.0, spent / max(1, B * self.probe_n))
        # 2. budget
        budget = B * self.n * per_solution
        extra = int(max(0.0, budget - spent) // per_solution)
        shares = spread(extra, [d + self.min_weight for d in difficulty])
        easy = [d <= self.easy_threshold for d in difficulty]
        # 3. search per kind and share (one batch per group)
        results = {}
        groups: dict[tuple[str, int], list[int]] = {}
        for b in range(B):
            if easy[b]:
                groups.setdefault(("best_of_n", shares[b]), []).append(b)
            else:
                groups.setdefault(("beam", max(shares[b], self.min_beam_n)), []).append(b)
        for (kind, share), members in groups.items():
            sub = [problems[b] for b in members]
            if kind == "beam":
                out = BeamSearch(n=share, beam_width=min(self.beam_width, share), choice="best").run(ctx, sub)
                for b, r in zip(members, out):
                    # The probe's solutions compete with the beam's (same aggregated PRM score).
                    cands = [dict(c, **{"pass": "beam"}) for c in r.candidates] + probe[b]
                    i, sc = choose(cands, "best")
                    chosen = cands[i] if i >= 0 else {"answer": None, "text": ""}
                    r.answer, r.solution, r.candidates = chosen["answer"], chosen["text"], cands
                    r.score = math.nan if sc is None else float(sc)
                    r.steps = ctx.step.split_steps(chosen["text"])
                    results[b] = r
                continue
            extra_cands: list[list[dict]] = [[] for _ in members]
            if share > 0:
                t2, l2 = sample_solutions(ctx, sub, share, score=True)
                sc2 = ctx.path_scores(t2)
                for j in range(len(members)):
                    for n in l2[j]:
                        text = ctx.text(t2, j, n)
                        s = float(sc2[j, n])
                        extra_cands[j].append({"answer": ctx.answer(text), "score": None if math.isnan(s) else s,
                                               "text": text, "pass": "extra"})
                ctx.policy.release(t2)
            for j, b in enumerate(members):
                cands = probe[b] + extra_cands[j]
                i, sc = choose(cands, self.easy_choice)
                chosen = cands[i] if i >= 0 else {"answer": None, "text": ""}
                results[b] = SearchResult(id=problems[b].id, answer=chosen["answer"], solution=chosen["text"],
                                          score=math.nan if sc is None else float(sc),
                                          steps=ctx.step.split_steps(chosen["text"]), candidates=cands)
        # The allocation of the last batch, for inspection (difficulty, kind, share per problem).
        self.last_allocation = [{"id": problems[b].id, "difficulty": difficulty[b], "spread": spread_[b],
                                 "easy": easy[b], "kind": "best_of_n" if easy[b] else "beam",
                                 "share": shares[b], "tokens_per_solution": per_solution}
                                for b in range(B)]
        return [results[b] for b in range(B)]
