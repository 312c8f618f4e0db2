"""Scoring solutions that are given as text, through the reward-model door.

A reward model scores tree nodes (``score(tree, pairs, policy)``), the steps a policy wrote.
To score solutions written elsewhere (a benchmark's, e.g. ProcessBench's) :class:`GivenSteps`
plays the policy's part: each solution becomes one chain in a :class:`BatchedTree` — the root
holds the prompt's tokens, node ``i`` (depth ``i``) the tokens of step ``i`` followed by the step
delimiter, the last node is terminal — in a token arena tokenised with the reward model's own
tokenizer, so the reward reads the ids as they are. ``text`` gives the steps back as text
(prompted rewards such as ``judge`` read that).

:func:`score_given_steps` then asks the reward for depth 1 of every chain of a batch, then depth
2, ...: each call scores only the new step of each chain on the prefix the reward cached at the
previous depth (an incremental PRM never re-encodes a prefix), exactly as during a search.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from lrm_engine.core.interfaces import StepConvention
from lrm_engine.core.tree import BatchedTree
from lrm_engine.errors import UserError
from lrm_engine.models.token_store import TokenArena


class StepRewardError(UserError, ValueError):
    """The reward cannot score given steps (printed by ``lrm`` as one line, exit 2)."""


def reward_tokenizer(reward):
    """The tokenizer a reward model reads ids with (None for text-only rewards such as judge)."""
    r = reward.resolve() if callable(getattr(reward, "resolve", None)) else reward
    for obj in (r, getattr(r, "inner", None), getattr(r, "lm", None)):
        if obj is None:
            continue
        if callable(getattr(obj, "resolve", None)):
            obj = obj.resolve()
        tok = getattr(obj, "tokenizer", None)
        if tok is not None:
            return tok
    return None


class GivenSteps:
    """The policy side of a batch of given solutions (see the module docstring)."""

    def __init__(self, tokenizer, step: StepConvention):
        self.tokenizer = tokenizer
        self.step = step
        self._arena: dict[int, TokenArena] = {}
        self._texts: dict[int, list[tuple[str, list[str]]]] = {}

    def build(self, solutions: Sequence[tuple[str, Sequence[str]]]) -> BatchedTree:
        """A tree batch with one chain per ``(prompt, steps)`` solution (every one non-empty)."""
        n = max(len(s) for _, s in solutions) + 1
        tree = BatchedTree.empty(len(solutions), n, 1)
        arena = TokenArena()
        tok, delim = self.tokenizer, self.step.delimiter
        for b, (prompt, steps) in enumerate(solutions):
            L = len(steps)
            if L == 0:
                raise ValueError(f"solution {b} has no step")
            tree.parent[b, 1:L + 1] = torch.arange(0, L, dtype=torch.int32)
            tree.action_from_parent[b, 1:L + 1] = 0
            tree.depth[b, 1:L + 1] = torch.arange(1, L + 1, dtype=torch.int32)
            tree.children_index[b, 0:L, 0] = torch.arange(1, L + 1, dtype=torch.int32)
            tree.terminal[b, L] = True
            tree.num_nodes[b] = L + 1
            if tok is not None:
                pieces = [tok(prompt, add_special_tokens=True)["input_ids"]]
                d = tok(delim, add_special_tokens=False)["input_ids"]
                pieces += [tok(s, add_special_tokens=False)["input_ids"] + d for s in steps]
                for i, ids in enumerate(pieces):
                    tree.token_offset[b, i] = arena.append(ids)
                    tree.token_length[b, i] = len(ids)
        self._arena[id(tree)] = arena
        self._texts[id(tree)] = [(p, list(s)) for p, s in solutions]
        return tree

    def arena(self, tree: BatchedTree) -> TokenArena:
        return self._arena[id(tree)]

    def text(self, tree: BatchedTree, b: int, n: int, with_prompt: bool = False) -> str:
        """Steps 1..n joined by the delimiter (each followed by it); the prompt first if asked."""
        prompt, steps = self._texts[id(tree)][b]
        body = self.step.join_steps(steps[:n])
        return prompt + body if with_prompt else body

    def release(self, tree: BatchedTree) -> None:
        self._arena.pop(id(tree), None)
        self._texts.pop(id(tree), None)


def check_step_reward(reward) -> None:
    """Refuse a reward that scores finished solutions only (``scores_steps = False``: ``orm``)."""
    if getattr(reward, "scores_steps", True) is False:
        raise StepRewardError(f"reward={getattr(reward, 'name', type(reward).__name__)}: scores "
                              f"finished solutions only, not steps; pick a step reward (prm_token, "
                              f"prm_head, value_head, judge)")


def score_given_steps(reward, solutions: Sequence[tuple[str, Sequence[str]]], *,
                      step: StepConvention, batch_size: int = 8,
                      on_batch: Callable[[int, list[list[float]]], None] | None = None) -> list[list[float]]:
    """Per-step scores (one list per solution, one float per step; NaN where the reward gave
    none) of ``(prompt, steps)`` solutions from ``reward``, ``batch_size`` solutions per tree batch.
    ``on_batch(start, scores)`` is called after each batch (``start``: its first index)."""
    check_step_reward(reward)
    policy = GivenSteps(reward_tokenizer(reward), step)
    out: list[list[float]] = []
    for s in range(0, len(solutions), batch_size):
        chunk = solutions[s:s + batch_size]
        tree = policy.build(chunk)
        scores = [[math.nan] * len(st) for _, st in chunk]
        try:
            for d in range(1, max(len(st) for _, st in chunk) + 1):
                rows = [b for b, (_, st) in enumerate(chunk) if len(st) >= d]
                pairs = torch.tensor([[b, d] for b in rows], dtype=torch.long)
                got = reward.score(tree, pairs, policy).tolist()
                for b, v in zip(rows, got):
                    scores[b][d - 1] = float(v)
        finally:
            rel = getattr(reward, "release", None)
            if rel is not None:
                rel(tree)
            policy.release(tree)
        out += scores
        if on_batch is not None:
            on_batch(s, scores)
    return out
