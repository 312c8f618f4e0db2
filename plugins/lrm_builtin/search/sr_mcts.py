"""`sr_mcts`: Self-Refine MCTS over whole solutions (LLaMA-Berry, Zhang et al. 2024).

Nodes are complete solutions, not steps. Per problem the search keeps a solution tree:

1. Initialisation: ``init_solutions`` solutions sampled from the task prompt (the roots).
2. Selection: from a virtual root above the roots, descend by UCT
   ``V(c) + c_uct * sqrt(ln(N(parent) + 1) / (N(c) + eps))`` until a node with fewer than
   ``max_children`` rewrites (a node is expandable until it has that many).
3. Expansion (self-refine): the policy first writes a critique of the selected solution
   (``critique_template``, at most ``critique_steps`` steps), then a rewrite conditioned on the
   solution and the critique (``rewrite_template``, up to ``search_run.max_steps`` steps). The
   rewrite is the new child node.
4. Evaluation: the pairwise reward (``reward=pairwise``, :class:`PairwiseReward.compare`, both
   orders) compares the new solution with every solution already in its tree; Enhanced Borda
   Count over the whole preference matrix gives each node its global quantile Q_g; its local
   win rate Q_l is the mean P(node > neighbour) over its parent and children (0.5 if it has
   none); Q = alpha * Q_l + (1 - alpha) * Q_g.
5. Backup: visit counts +1 from the new node up; values bottom-up
   ``V(a) = (1 - gamma) * Q(a) + gamma * max_child V(child)`` (Q(a) for a leaf), recomputed for
   all nodes because EBC's global ranking moves with every new solution.

Final answer: among all solutions, by ``choice`` (best = highest global EBC quantile Q_g;
majority / weighted = votes over the final answers, weighted by Q_g).

Batched across problems: every iteration is one critique generation, one rewrite generation
(each one policy call per step for the whole batch) and one pairwise judge call. With the tiny
embedded policy the critiques and rewrites are junk text; the machinery is what runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lrm_builtin.search.common import check_choice, choose
from lrm_engine.core.interfaces import SearchResult
from lrm_engine.core.tree import BatchedTree
from lrm_engine.rewards.pairwise import enhanced_borda_count

CRITIQUE_TEMPLATE = (
    "{prompt}{solution}\n"
    "Review the solution above step by step and point out every mistake.\n"
    "Critique:\n"
)
REWRITE_TEMPLATE = (
    "Previous solution:\n{solution}\n"
    "Critique:\n{critique}\n"
    "Rewrite the solution, fixing the mistakes.\n"
    "{prompt}"
)


def generate_texts(ctx, prompts: list[str], max_steps: int, streams: list[str]) -> list[str]:
    """One chain per prompt, step by step (one policy call per step for all prompts).

    streams[i]: what prompt i is for (e.g. ``"<problem id>|rewrite|3"``), the key of its
    sampling stream (SearchContext.start_tree), so draws do not depend on the batch.
    """
    if not prompts:
        return []
    B = len(prompts)
    tree = BatchedTree.empty(B, 1 + max(1, max_steps), 1)
    ctx.start_tree(tree, streams, count=False)
    ctx.policy.init_roots(tree, prompts)
    ar = torch.arange(B)
    frontier = torch.zeros((B, 1), dtype=torch.int32)
    last = torch.zeros(B, dtype=torch.int64)
    for _ in range(max(1, max_steps)):
        ok = frontier[:, 0] >= 0
        active = ok & ~tree.terminal[ar, frontier[:, 0].clamp_min(0).long()]
        if not bool(active.any()):
            break
        exp = ctx.expand(tree, torch.where(active[:, None], frontier, -1), 1, score=False)
        child = exp.children[:, 0, 0]
        grew = active & (child >= 0)
        last = torch.where(grew, child.long(), last)
        frontier = torch.where(grew[:, None], child[:, None], torch.full_like(frontier, -1))
    out = [ctx.text(tree, b, int(last[b])) if int(last[b]) > 0 else "" for b in range(B)]
    ctx.policy.release(tree)
    return out


@dataclass
class _Node:
    text: str
    answer: str | None
    parent: int  # -1: a root (child of the virtual root)
    children: list
    visits: int = 0
    q_global: float = 0.5
    q: float = 0.5
    v: float = 0.5


class SRMCTSSearch:
    """LLaMA-Berry SR-MCTS with a pairwise reward and Enhanced Borda Count (see module doc)."""

    name = "sr_mcts"

    def __init__(self, iterations: int = 8, max_children: int = 2, init_solutions: int = 1,
                 c_uct: float = 1.4, alpha: float = 0.5, gamma: float = 0.5, critique_steps: int = 4,
                 choice: str = "best", critique_template: str | None = None,
                 rewrite_template: str | None = None, name: str = "sr_mcts"):
        check_choice(choice)
        if iterations < 0 or max_children < 1 or init_solutions < 1 or critique_steps < 1:
            raise ValueError("search.iterations >= 0, max_children >= 1, init_solutions >= 1 and "
                             "critique_steps >= 1 are required")
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= gamma <= 1.0:
            raise ValueError("search.alpha and search.gamma must be in [0, 1]")
        self.iterations, self.max_children, self.init_solutions = iterations, max_children, init_solutions
        self.c_uct, self.alpha, self.gamma, self.critique_steps = c_uct, alpha, gamma, critique_steps
        self.choice = choice
        self.critique_template = critique_template or CRITIQUE_TEMPLATE
        self.rewrite_template = rewrite_template or REWRITE_TEMPLATE

    # ------------------------------------------------------------------ tree bookkeeping
    def _select(self, nodes: list[_Node]) -> int:
        roots = [i for i, n in enumerate(nodes) if n.parent < 0]
        kids, total = roots, sum(nodes[i].visits for i in roots)
        while True:
            best = max(kids, key=lambda c: (nodes[c].v + self.c_uct * math.sqrt(
                math.log(total + 1) / (nodes[c].visits + 1e-6)), -c))
            node = nodes[best]
            if len(node.children) < self.max_children:
                return best
            kids, total = node.children, node.visits

    def _evaluate(self, nodes: list[_Node], pref: torch.Tensor, reward) -> None:
        ebc = enhanced_borda_count(pref, getattr(reward, "threshold", 0.5), getattr(reward, "tie_break", "soft"))
        for i, n in enumerate(nodes):
            nb = ([n.parent] if n.parent >= 0 else []) + list(n.children)
            local = [float(pref[i, j]) for j in nb if not math.isnan(float(pref[i, j]))]
            q_local = sum(local) / len(local) if local else 0.5
            n.q_global = float(ebc.quantile[i])
            n.q = self.alpha * q_local + (1.0 - self.alpha) * n.q_global
        for i in range(len(nodes) - 1, -1, -1):  # children are created after their parents
            n = nodes[i]
            n.v = n.q if not n.children else (1 - self.gamma) * n.q + self.gamma * max(nodes[c].v for c in n.children)

    @staticmethod
    def _grow(pref: torch.Tensor) -> torch.Tensor:
        n = pref.shape[0]
        out = torch.full((n + 1, n + 1), float("nan"))
        out[:n, :n] = pref
        return out

    # ------------------------------------------------------------------ the search
    def run(self, ctx, problems):
        reward = ctx.reward
        if reward is None or not callable(getattr(reward, "compare", None)):
            raise ValueError("search=sr_mcts needs a pairwise preference reward: set reward=pairwise "
                             "(a reward with compare(questions, first, second))")
        B = len(problems)
        base = [ctx.prompt(p) for p in problems]
        base = [b if isinstance(b, str) else p.question for b, p in zip(base, problems)]
        questions = [p.question for p in problems]
        trees: list[list[_Node]] = [[] for _ in range(B)]
        prefs = [torch.empty((0, 0)) for _ in range(B)]

        def add(b: int, text: str, parent: int) -> None:
            trees[b].append(_Node(text=text, answer=ctx.answer(text), parent=parent, children=[]))
            prefs[b] = self._grow(prefs[b])
            i = len(trees[b]) - 1
            if parent >= 0:
                trees[b][parent].children.append(i)
            j = i
            while j >= 0:
                trees[b][j].visits += 1
                j = trees[b][j].parent

        def judge(new: list[tuple[int, int]]) -> None:
            """Compare each new node with every older node of its tree: one reward call."""
            qs, fa, fb, where = [], [], [], []
            for b, i in new:
                for j in range(len(trees[b])):
                    if j != i and math.isnan(float(prefs[b][i, j])):
                        qs.append(questions[b])
                        fa.append(trees[b][i].text)
                        fb.append(trees[b][j].text)
                        where.append((b, i, j))
            p = reward.compare(qs, fa, fb) if qs else torch.empty(0)
            for (b, i, j), x in zip(where, torch.as_tensor(p).tolist()):
                prefs[b][i, j], prefs[b][j, i] = x, 1.0 - x
            for b in {b for b, _ in new}:
                self._evaluate(trees[b], prefs[b], reward)

        # 1. initial solutions (roots)
        ids = [str(p.id) for p in problems]
        init = generate_texts(ctx, [base[b] for b in range(B) for _ in range(self.init_solutions)], ctx.max_steps,
                              [f"{ids[b]}|init|{j}" for b in range(B) for j in range(self.init_solutions)])
        new = []
        for r, text in enumerate(init):
            b = r // self.init_solutions
            add(b, text, -1)
            new.append((b, len(trees[b]) - 1))
        judge(new)
        # 2-5. select, critique, rewrite, evaluate, back up
        for it in range(self.iterations):
            sel = [self._select(trees[b]) for b in range(B)]
            crit = generate_texts(ctx, [self.critique_template.format(prompt=base[b], solution=trees[b][sel[b]].text,
                                                                      question=questions[b]) for b in range(B)],
                                  self.critique_steps, [f"{ids[b]}|critique|{it}" for b in range(B)])
            rew = generate_texts(ctx, [self.rewrite_template.format(prompt=base[b], solution=trees[b][sel[b]].text,
                                                                    critique=crit[b], question=questions[b])
                                       for b in range(B)], ctx.max_steps, [f"{ids[b]}|rewrite|{it}" for b in range(B)])
            new = []
            for b in range(B):
                add(b, rew[b], sel[b])
                new.append((b, len(trees[b]) - 1))
            judge(new)
        return [self._result(ctx, p, trees[b]) for b, p in enumerate(problems)]

    def _result(self, ctx, problem, nodes: list[_Node]) -> SearchResult:
        cands = [{"answer": n.answer, "score": n.q_global, "text": n.text, "node": i, "parent": n.parent,
                  "visits": n.visits, "value": n.v} for i, n in enumerate(nodes)]
        i, sc = choose(cands, self.choice)
        chosen = cands[i]
        # The solution tree is in the candidates (node, parent, visits, value, score = Q_g).
        return SearchResult(id=problem.id, answer=chosen["answer"], solution=chosen["text"],
                            score=math.nan if sc is None else float(sc),
                            steps=ctx.step.split_steps(chosen["text"]), candidates=cands)
