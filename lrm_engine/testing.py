"""A scripted policy and reward model over a deterministic tree with a known optimum.

For testing search plugins (ours and third-party ones) without a language model: the world is
a tree of depth ``depth`` where every node has ``branching`` possible next steps. A path is a
tuple of choices; its step texts, log-probabilities, step scores and final answer are given by
functions of the path, so the best path is known in advance.

Child i of a node is the i-th most likely choice (by ``logprob``), so greedy decoding (k = 1)
follows the most likely path; sampling k children gives the k most likely choices (the
scripted world has no randomness).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from lrm_engine.core.tree import BatchedTree

Path = tuple[int, ...]


@dataclass
class ScriptedCounters:
    tokens_computed: int = 0
    tokens_reused: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"tokens_computed": self.tokens_computed, "tokens_reused": self.tokens_reused}


@dataclass
class ScriptedResult:
    children: torch.Tensor
    logprob_sum: torch.Tensor
    finished: torch.Tensor
    children_bt: torch.Tensor


@dataclass
class ScriptedWorld:
    """The deterministic tree: functions of the path (the tuple of choices from the root)."""

    branching: int
    depth: int
    # logprob(path) of the last step of path.
    logprob: Callable[[Path], float]
    # score(path) in [0, 1] of the last step of path (what the scripted PRM returns).
    score: Callable[[Path], float]
    # answer(path) for a complete path (len == depth).
    answer: Callable[[Path], str]

    def children(self, path: Path, k: int) -> list[Path]:
        """The k most likely continuations (ties by choice index)."""
        options = sorted(range(self.branching), key=lambda c: (-self.logprob(path + (c,)), c))
        return [path + (c,) for c in options[:k]]

    def step_text(self, path: Path) -> str:
        text = f"s{len(path)}c{path[-1]}"
        if len(path) == self.depth:
            text += f" Answer: {self.answer(path)}"
        return text


@dataclass
class ScriptedPolicy:
    """Implements the Policy protocol over a ScriptedWorld."""

    world: ScriptedWorld
    counters: ScriptedCounters = field(default_factory=ScriptedCounters)
    expand_calls: int = 0

    def __post_init__(self) -> None:
        self._paths: dict[tuple[int, int, int], Path] = {}

    def init_roots(self, tree: BatchedTree, prompts) -> None:
        for b in range(tree.batch_size):
            self._paths[(id(tree), b, BatchedTree.ROOT)] = ()

    def path(self, tree: BatchedTree, b: int, n: int) -> Path:
        return self._paths[(id(tree), b, n)]

    def expand(self, tree: BatchedTree, nodes: torch.Tensor, k: int, sampling=None) -> ScriptedResult:
        from lrm_engine import ops

        self.expand_calls += 1
        B, M = nodes.shape
        leaf = nodes.to(torch.int32).repeat_interleave(k, dim=1)  # [B, M*k]
        action = torch.arange(k, dtype=torch.int32).repeat(B, M, 1)
        kids: dict[tuple[int, int], list[Path]] = {}
        for b in range(B):
            for j in range(M):
                n = int(nodes[b, j])
                if n < 0:
                    action[b, j] = -1
                    continue
                kids[b, j] = self.world.children(self.path(tree, b, n), k)
                action[b, j, len(kids[b, j]):] = -1  # fewer options than k: no slot
        action = action.view(B, M * k)
        action[leaf < 0] = -1
        prior = torch.full((B, M * k, tree.num_actions), 1.0 / tree.num_actions)
        made = ops.expand(tree, leaf, action, prior, None, grow=True)
        children_bt = made.view(B, M, k)
        lps, fin, flat = [], [], []
        for (b, j), options in kids.items():
            row_lp, row_fin, row_c = [], [], []
            for i in range(k):
                c = int(children_bt[b, j, i])
                if i >= len(options):
                    row_lp.append(math.nan)
                    row_fin.append(True)
                    row_c.append(-1)
                    continue
                p = options[i]
                self._paths[(id(tree), b, c)] = p
                done = len(p) >= self.world.depth
                tree.terminal[b, c] = done
                self.counters.tokens_computed += 1
                row_lp.append(self.world.logprob(p))
                row_fin.append(done)
                row_c.append(c)
            lps.append(row_lp)
            fin.append(row_fin)
            flat.append(row_c)
        return ScriptedResult(
            children=torch.tensor(flat, dtype=torch.int32).view(-1, k),
            logprob_sum=torch.tensor(lps, dtype=torch.float32).view(-1, k),
            finished=torch.tensor(fin, dtype=torch.bool).view(-1, k),
            children_bt=children_bt,
        )

    def text(self, tree: BatchedTree, b: int, n: int, with_prompt: bool = False) -> str:
        p = self.path(tree, b, n)
        return "".join(self.world.step_text(p[: i + 1]) + "\n" for i in range(len(p)))

    def release(self, tree: BatchedTree) -> None:
        key = id(tree)
        for t in [t for t in self._paths if t[0] == key]:
            del self._paths[t]


@dataclass
class ScriptedReward:
    """Implements the RewardModel protocol: the world's step score of each node's last step."""

    world: ScriptedWorld
    counters: ScriptedCounters = field(default_factory=ScriptedCounters)
    score_calls: int = 0

    def score(self, tree: BatchedTree, pairs: torch.Tensor, policy: ScriptedPolicy) -> torch.Tensor:
        self.score_calls += 1
        out = []
        for b, n in pairs.tolist():
            self.counters.tokens_computed += 1
            out.append(self.world.score(policy.path(tree, b, n)))
        return torch.tensor(out, dtype=torch.float32)
