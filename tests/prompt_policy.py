"""A scripted Policy whose whole chain is a function of its prompt (rstar, reflexion, journey tests)."""

from __future__ import annotations

import math

import torch

from lrm_engine.testing import ScriptedCounters, ScriptedResult


class PromptPolicy:
    """``solve(prompt) -> steps``: tree b's chain is solve(its prompt); a node at depth d holds the
    first d steps; the last step ends the solution. Every prompt received is kept in ``prompts``."""

    def __init__(self, solve):
        self.solve = solve
        self.counters = ScriptedCounters()
        self.prompts: list[str] = []
        self._steps: dict = {}
        self._depth: dict = {}

    def init_roots(self, tree, prompts):
        for b, p in enumerate(prompts):
            self.prompts.append(p)
            self._steps[(id(tree), b)] = list(self.solve(p))
            self._depth[(id(tree), b, 0)] = 0

    def expand(self, tree, nodes, k, sampling=None):
        from lrm_engine import ops

        nodes = torch.as_tensor(nodes, dtype=torch.int32)
        B, M = nodes.shape
        leaf = nodes.repeat_interleave(k, dim=1)
        action = torch.full((B, M, k), -1, dtype=torch.int32)
        for b in range(B):
            for j in range(M):
                n = int(nodes[b, j])
                if n >= 0 and self._depth[(id(tree), b, n)] < len(self._steps[(id(tree), b)]):
                    action[b, j, 0] = 0
        action = action.view(B, M * k)
        prior = torch.full((B, M * k, tree.num_actions), 1.0 / tree.num_actions)
        made = ops.expand(tree, leaf, action, prior, None, grow=True).view(B, M, k)
        made = torch.where(action.view(B, M, k) >= 0, made, -1)
        lps, fin, flat = [], [], []
        for b in range(B):
            for j in range(M):
                n = int(nodes[b, j])
                if n < 0:
                    continue
                c = int(made[b, j, 0])
                if c >= 0:
                    d = self._depth[(id(tree), b, n)] + 1
                    self._depth[(id(tree), b, c)] = d
                    tree.terminal[b, c] = d >= len(self._steps[(id(tree), b)])
                    self.counters.tokens_computed += 1
                lps.append([0.0] + [math.nan] * (k - 1))
                fin.append([c >= 0 and bool(tree.terminal[b, c])] + [True] * (k - 1))
                flat.append([c] + [-1] * (k - 1))
        return ScriptedResult(children=torch.tensor(flat, dtype=torch.int32).view(-1, k),
                              logprob_sum=torch.tensor(lps).view(-1, k),
                              finished=torch.tensor(fin).view(-1, k), children_bt=made)

    def text(self, tree, b, n, with_prompt=False):
        d = self._depth[(id(tree), b, n)]
        return "".join(s + "\n" for s in self._steps[(id(tree), b)][:d])

    def release(self, tree):
        pass
