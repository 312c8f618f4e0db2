"""Prompted chains: one chain of steps per prompt string, all prompts of a call in one batched tree.

Used by the searches whose nodes are texts built from prompt templates (``rstar``'s actions and
discriminator, ``reflexion``'s attempts and reflections) rather than children of one tree:

- one policy call per step for every prompt of the call (and, with ``score``, one reward call);
- chain i may write at most ``max_steps[i]`` steps; it stops earlier at the end of a solution;
- chain i's sampling stream is ``(seed, streams[i])`` (e.g. ``"<problem id>|A3|7"``), so a chain
  is the same whatever else shares its batch, and its per-tree compute counts go to the problem
  ``owners[i]`` (the record that pays for it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from lrm_engine.core.rng import problem_keys
from lrm_engine.core.tree import BatchedTree


@dataclass
class Chain:
    """What one prompt produced."""

    # The generated steps' text (delimiters included; the prompt excluded).
    text: str
    # Steps written.
    steps: int
    # The last step ended a solution (the policy marked it terminal).
    finished: bool
    # Aggregated reward score of the chain's path (ctx.aggregation); NaN unscored / no steps.
    score: float
    # Reward score of its last step alone (an ORM's verdict on a finished solution); NaN unscored.
    last_score: float = math.nan


def generate_chains(ctx, prompts: Sequence[str], max_steps: Sequence[int], streams: Sequence[str],
                    owners: Sequence[str], score: bool = False, sampling=None) -> list[Chain]:
    """One chain per prompt (see the module doc); ``ctx.policy`` writes them (``sampling``:
    a SamplingConfig, None = the context's)."""
    B = len(prompts)
    if B == 0:
        return []
    limit = torch.tensor([max(0, int(m)) for m in max_steps], dtype=torch.long)
    tree = BatchedTree.empty(B, 1 + max(1, int(limit.max())), 1)
    ctx.start_tree(tree, list(owners), count=True)
    tree.rng_key[:, BatchedTree.ROOT] = problem_keys(ctx.seed, [str(s) for s in streams]).to(tree.rng_key.device)
    ctx.policy.init_roots(tree, list(prompts))
    ar = torch.arange(B)
    frontier = torch.zeros(B, dtype=torch.long)
    last = torch.zeros(B, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.long)
    for s in range(int(limit.max())):
        active = (frontier >= 0) & ~tree.terminal[ar, frontier.clamp_min(0)] & (done < limit)
        if not bool(active.any()):
            break
        nodes = torch.where(active, frontier, -1)[:, None].to(torch.int32)
        exp = ctx.expand(tree, nodes, 1, sampling=sampling, score=score)
        child = exp.children[:, 0, 0].long()
        grew = active & (child >= 0)
        last = torch.where(grew, child, last)
        done = done + grew.long()
        frontier = torch.where(grew, child, torch.full_like(frontier, -1))
    scores = ctx.path_scores(tree)[ar, last] if score else torch.full((B,), math.nan)
    lasts = tree.step_score[ar, last] if score else torch.full((B,), math.nan)
    out = []
    for b in range(B):
        n = int(last[b])
        out.append(Chain(text=ctx.text(tree, b, n) if n > 0 else "", steps=int(done[b]),
                         finished=bool(tree.terminal[b, n]) if n > 0 else False,
                         score=float(scores[b]) if n > 0 else math.nan,
                         last_score=float(lasts[b]) if n > 0 else math.nan))
    ctx.policy.release(tree)
    return out
