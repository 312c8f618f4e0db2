"""Shared pieces of the built-in searches: choosing a final answer among finished candidates."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch

from lrm_engine.core.interfaces import SearchResult

# How a search picks its final answer among finished candidates.
CHOICES = ("best", "majority", "weighted")


def check_choice(name: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"unknown answer choice {name!r}; choose one of: {', '.join(CHOICES)}")
    return name


def choose(candidates: list[dict[str, Any]], how: str) -> tuple[int, float]:
    """Index of the chosen candidate and its score.

    best: highest aggregated score (ties: first). majority: the most frequent answer
    (self-consistency; ties: the answer seen first), score = its vote share. weighted: the
    answer with the highest summed score (PRM-weighted voting), score = that sum's share.
    Candidates without an answer never win a vote (they can win `best` only if nothing else
    exists).
    """
    if not candidates:
        return -1, math.nan
    if how == "best":
        scores = [c["score"] if c["score"] is not None and not math.isnan(c["score"]) else -math.inf
                  for c in candidates]
        i = max(range(len(candidates)), key=lambda j: (scores[j], -j))
        return i, candidates[i]["score"]
    tally: OrderedDict[str, float] = OrderedDict()
    first: dict[str, int] = {}
    for j, c in enumerate(candidates):
        a = c["answer"]
        if a is None:
            continue
        w = 1.0
        if how == "weighted":
            s = c["score"]
            w = 0.0 if s is None or math.isnan(s) else float(s)
        tally[a] = tally.get(a, 0.0) + w
        first.setdefault(a, j)
    if not tally:
        return choose(candidates, "best")
    total = sum(tally.values())
    best = max(tally, key=lambda a: (tally[a], -first[a]))
    share = tally[best] / total if total > 0 else math.nan
    # Representative: the highest-scored candidate with that answer.
    members = [j for j, c in enumerate(candidates) if c["answer"] == best]
    rep = max(members, key=lambda j: (candidates[j]["score"] if candidates[j]["score"] is not None
                                      and not math.isnan(candidates[j]["score"]) else -math.inf, -j))
    return rep, share


def finish(ctx, tree, problems, leaves: list[list[int]], how: str) -> list[SearchResult]:
    """Build SearchResults from each tree's finished leaves (node slots), choosing by ``how``.

    With ``ctx.export_trees`` each result also gets its whole tree (``SearchResult.tree``, see
    lrm_engine/export/tree_json.py): call this before ``ctx.policy.release(tree)``.
    """
    scores = ctx.path_scores(tree)
    out = []
    for b, prob in enumerate(problems):
        cands = []
        for n in leaves[b]:
            text = ctx.text(tree, b, n)
            s = float(scores[b, n])
            cands.append({"answer": ctx.answer(text), "score": None if math.isnan(s) else s,
                          "text": text, "node": int(n)})
        i, sc = choose(cands, how)
        chosen = cands[i] if i >= 0 else {"answer": None, "text": "", "node": 0}
        out.append(SearchResult(
            id=prob.id, answer=chosen["answer"], solution=chosen["text"],
            score=math.nan if sc is None else float(sc),
            steps=ctx.step.split_steps(chosen["text"]), candidates=cands,
        ))
        if getattr(ctx, "export_trees", False):
            # export.tree=json|html: the whole tree, read now, before the policy releases it.
            from lrm_engine.export.tree_json import tree_to_dict

            out[-1].tree = tree_to_dict(
                ctx, tree, b, prob, chosen=cands[i]["node"] if i >= 0 else None,
                candidates=leaves[b], answer=chosen["answer"],
                score=None if sc is None else float(sc), path_scores=scores,
            )
    return out


def terminal_nodes(tree) -> list[list[int]]:
    """Per tree, the slots of its terminal (finished) nodes in creation order — for searches in
    which every node is created as a candidate, the finished candidates without bookkeeping in
    the search loop."""
    used = torch.arange(tree.capacity)[None, :] < tree.num_nodes[:, None]
    out: list[list[int]] = [[] for _ in range(tree.batch_size)]
    for b, n in (tree.terminal & used).nonzero().tolist():
        out[b].append(n)
    return out


def grow_chains(ctx, tree, frontier: torch.Tensor, score: bool = True) -> torch.Tensor:
    """Extend every unfinished leaf of frontier [B, M] by one step at a time until all finish.

    One policy call (and one reward call) per step for the whole batch; returns the leaves.
    """
    B = tree.batch_size
    ar = torch.arange(B)[:, None]
    for _ in range(ctx.max_steps - 1):
        ok = frontier >= 0
        active = ok & ~tree.terminal[ar, frontier.clamp_min(0).long()]
        if not bool(active.any()):
            break
        exp = ctx.expand(tree, torch.where(active, frontier, -1), 1, score=score)
        frontier = torch.where(active, exp.children[..., 0], frontier)
    return frontier


def duplicate_siblings(ctx, tree, cand: torch.Tensor) -> torch.Tensor:
    """[B, C] bool: candidate j repeats an earlier candidate of its row with the same parent and
    the same step tokens (sampling often draws one step string many times). Vectorised over the
    batch; all False when the policy keeps no token arena (e.g. scripted test policies)."""
    first = first_copies(ctx, tree, cand)
    return (cand >= 0) & (first != torch.arange(cand.shape[1])[None, :])


def first_copies(ctx, tree, cand: torch.Tensor, parent_key: torch.Tensor | None = None) -> torch.Tensor:
    """[B, C] int64: for each candidate, the column of the first candidate of its row with the
    same parent key and the same step tokens (its own column when none; -1 where cand is -1).

    ``parent_key`` [B, C] (default: the parent slots, i.e. siblings): give each candidate its
    parent's own path class (the first-copy column of the parent among its candidates, as this
    returned one step earlier) and equal keys mean equal *paths*, so copies under different
    copies of one prefix are found too. Vectorised; without a token arena every candidate is
    its own first copy."""
    B, C = cand.shape
    ok = cand >= 0
    cols = torch.arange(C)[None, :].expand(B, C)
    arena_of = getattr(ctx.policy, "arena", None)
    if not callable(arena_of) or C < 2:
        return torch.where(ok, cols, -1)
    idx = cand.clamp_min(0).long()
    rows = torch.arange(B)[:, None]
    toks = arena_of(tree).spans(tree.token_offset[rows, idx], tree.token_length[rows, idx])
    toks = toks.view(B, C, -1)
    par = tree.parent[rows, idx].long() if parent_key is None else parent_key.long()
    same = (toks[:, :, None, :] == toks[:, None, :, :]).all(-1) & (par[:, :, None] == par[:, None, :])
    same &= ok[:, :, None] & ok[:, None, :]
    upto = torch.ones(C, C, dtype=torch.bool).tril()  # [j, i]: i <= j
    first = (same & upto[None]).to(torch.uint8).argmax(-1)  # the first i <= j that matches
    return torch.where(ok, first, -1)
