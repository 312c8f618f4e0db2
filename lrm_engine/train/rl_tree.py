"""Tree-structured RL groups (``objective=tree_grpo``): each group sampled as one tree on the
engine, TreeRL's segment advantages from subtree values.

Sampling (:class:`TreeRolloutSource`). The next ``prompts_per_batch`` problems (seeded, resumable
order) become the roots of one :class:`~lrm_engine.core.tree.BatchedTree`, grown by the engine's
``tree`` policy (:class:`~lrm_engine.models.tree_policy.TreePolicy`, the policy being trained;
``policy="hf"`` for :class:`~lrm_engine.models.hf_policy.HFPolicy`), whose KV store holds each
node's segment once, so every child of a node attends over its parent's prefix without
recomputing it. The shape: the root is expanded into ``tree_width`` = m children; every node of
depth 1 .. ``branch_depth`` - 1 into ``branch_factor`` = k children (at the step delimiter);
from depth ``branch_depth`` = d on, every open path grows one step at a time until it ends
(answer / EOS) or reaches ``max_steps``. A full tree has m·k^(d-1) leaves (paths that end early
leave fewer). With ``branch_top`` = t > 0 (entropy branching, step-level), only the t open
nodes per tree of highest step surprisal (mean -log p of the step's tokens under the policy,
the sampled-token estimate of the step's entropy) are branched at each branching depth, the
others continue as single paths: the branches go to the uncertain steps, as EPTree forks at the
highest-entropy tokens (here at step granularity; token-level forks are not implemented).

Rewards. Each leaf's solution (the path's steps) is graded by the task's verifier
(``task.grade``: 1 / 0), plus ``reward_fn`` (the PRM's score) when given.

Advantages (:func:`segment_advantages`; TreeRL, Hou et al. 2025, Sec. 3.2). A *segment* is a
maximal chain of nodes between two branch points: every node n of the tree has
``L(n)`` = the leaves under it (n itself for a leaf), ``V(n) = mean_{l in L(n)} r_l``, and
``P(n)`` = its nearest strict ancestor with two or more children (or the root): the start of its
segment. The nodes of one segment share their leaves, hence V. Then

    global  G(n) = V(n) - V(root)
    local   L(n) = V(n) - V(P(n))
    A(n)         = (G(n) + L(n)) · w(n),   w(n) = 1/sqrt(|L(n)|)   (shared_weight="sqrt", TreeRL)
                                           w(n) = 1/|L(n)|          (shared_weight="once")
                                           w(n) = 1                 (shared_weight="none")

and every token of node n gets A(n). Training rows: one per leaf, prompt + the steps of its path
(each leaf's trajectory trained once), the prompt masked out; so a token of a node shared by
|L(n)| leaves appears in |L(n)| rows. ``w`` says how much of it counts: ``sqrt`` is TreeRL's
reweighting of shared (non-leaf) steps; ``once`` makes the rows' copies of a shared token sum to
one copy with the segment's advantage (the tree's tokens each counted once); ``none`` counts
every copy fully. A leaf's own steps have |L| = 1, w = 1 in every mode.

The batch is the rollout layout of :mod:`lrm_engine.objectives.grpo` (one group = one tree's
leaves, contiguous rows, ``group_offsets``) with per-token ``advantages [N, T]``, consumed by
:class:`~lrm_engine.objectives.tree_grpo.TreeGRPOObjective` (the GRPO loss family, clipped
ratio, k3 KL, its ``loss_type`` aggregation).

Counters (``log``, and cumulative in :meth:`TreeRolloutSource.totals`): ``tokens_per_leaf`` =
the policy's ``tokens_computed`` for the batch (prompts once per tree, each node's step once,
measured by the policy's counters) / leaves; ``iid_tokens_per_leaf`` = what sampling the same
leaves independently would compute: each leaf's prompt + full path (no padding);
``token_saving`` = 1 - their ratio; ``leaves`` per tree.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from ..objectives.tree_grpo import SHARED_WEIGHTS
from .data import DataOrder, take_examples, verifier_rewards


def segment_advantages(parent: Sequence[int], leaf_reward: Mapping[int, float],
                       shared_weight: str = "sqrt") -> dict[str, list[float]]:
    """TreeRL advantages of every node of one tree (module docstring).

    ``parent``: parent slot of each node, -1 for the root (node 0), parents before children;
    ``leaf_reward``: the reward of every leaf (a node with no child). Returns per node
    ``value`` V, ``leaves`` |L|, ``global`` G, ``local`` L, ``weight`` w and ``advantage`` A
    (the root's A is 0: it holds the prompt, which is not trained).
    """
    if shared_weight not in SHARED_WEIGHTS:
        raise ValueError(f"shared_weight must be one of {', '.join(SHARED_WEIGHTS)}, got {shared_weight!r}")
    n = len(parent)
    par = torch.tensor(list(parent), dtype=torch.long)
    if n == 0 or int(par[0]) != -1 or bool((par[1:] < 0).any()) or \
            bool((par[1:] >= torch.arange(1, n)).any()):
        raise ValueError("parent must list the root first (-1) and every parent before its children")
    nchild = torch.zeros(n, dtype=torch.long).index_add_(0, par[1:], torch.ones(n - 1, dtype=torch.long))
    is_leaf = nchild == 0
    missing = [i for i in torch.nonzero(is_leaf).flatten().tolist() if i not in leaf_reward]
    if missing:
        raise ValueError(f"no reward for leaves {missing}")
    rsum = torch.zeros(n, dtype=torch.float64)
    cnt = torch.zeros(n, dtype=torch.float64)
    for i, r in leaf_reward.items():
        if not bool(is_leaf[i]):
            raise ValueError(f"node {i} has children: only leaves get rewards")
        rsum[i], cnt[i] = float(r), 1.0
    # children after parents: one reverse sweep sums every subtree (O(n) for a group's tree)
    for i in range(n - 1, 0, -1):
        rsum[par[i]] += rsum[i]
        cnt[par[i]] += cnt[i]
    V = rsum / cnt
    branch = [0] * n  # P(n): nearest strict ancestor with >= 2 children, else the root
    for i in range(1, n):
        p = int(par[i])
        branch[i] = p if (p == 0 or int(nchild[p]) >= 2) else branch[p]
    Pv = V[torch.tensor(branch)]
    G = V - V[0]
    Lc = V - Pv
    w = {"sqrt": cnt.rsqrt(), "once": 1.0 / cnt, "none": torch.ones(n, dtype=torch.float64)}[shared_weight]
    A = (G + Lc) * w
    A[0] = 0.0
    return {"value": V.tolist(), "leaves": cnt.long().tolist(), "global": G.tolist(),
            "local": Lc.tolist(), "weight": w.tolist(), "advantage": A.tolist()}


def leaf_token_advantages(parent: Sequence[int], token_length: Sequence[int], leaves: Sequence[int],
                          node_adv: Sequence[float]) -> list[list[float]]:
    """Per leaf, the advantage of every completion token of its path (root's prompt excluded):
    node n's ``token_length[n]`` tokens each get ``node_adv[n]``."""
    out = []
    for leaf in leaves:
        path = []
        m = int(leaf)
        while m > 0:
            path.append(m)
            m = int(parent[m])
        row: list[float] = []
        for m in reversed(path):
            row.extend([float(node_adv[m])] * int(token_length[m]))
        out.append(row)
    return out


class TreeRolloutSource:
    """Groups sampled as trees with TreeRL segment advantages (see the module docstring)."""

    def __init__(self, model, tokenizer, task, *, split: str = "train", num_prompts: int | None = None,
                 prompts_per_batch: int = 8, tree_width: int = 2, branch_factor: int = 2,
                 branch_depth: int = 3, branch_top: int = 0, max_steps: int = 10,
                 max_step_tokens: int = 24, temperature: float = 1.0, shared_weight: str = "sqrt",
                 policy: str = "tree", seed: int = 0, shuffle: bool = True, reward_fn=None,
                 kv_budget_mb: float = 512.0):
        if min(prompts_per_batch, tree_width, branch_factor, branch_depth, max_steps) <= 0:
            raise ValueError("prompts_per_batch, tree_width, branch_factor, branch_depth and "
                             "max_steps must be positive")
        if branch_top < 0:
            raise ValueError(f"branch_top must be >= 0 (0: branch every node), got {branch_top}")
        if shared_weight not in SHARED_WEIGHTS:
            raise ValueError(f"shared_weight must be one of {', '.join(SHARED_WEIGHTS)}, got {shared_weight!r}")
        if policy not in ("tree", "hf"):
            raise ValueError(f"policy must be 'tree' or 'hf', got {policy!r}")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.examples = exs = take_examples(task, split, num_prompts)
        self.prompts_per_batch = prompts_per_batch
        self.tree_width, self.branch_factor, self.branch_depth = tree_width, branch_factor, branch_depth
        self.branch_top = int(branch_top)
        self.max_steps, self.max_step_tokens = max_steps, max_step_tokens
        self.temperature, self.shared_weight, self.policy_kind = float(temperature), shared_weight, policy
        self.seed, self.reward_fn, self.kv_budget_mb = seed, reward_fn, kv_budget_mb
        self.order = DataOrder(len(exs), seed, shuffle)
        self.position = 0
        # The L of dr_grpo's normaliser: the longest path's completion tokens.
        self.max_new_tokens = max_steps * max_step_tokens
        # Cumulative counters (resumed with the position): see totals().
        self._totals = {"tokens_computed": 0, "iid_tokens": 0, "leaves": 0, "trees": 0}

    @property
    def num_generations(self) -> int:
        """Leaves of a full tree (m·k^(d-1)); paths that end early leave fewer."""
        return self.tree_width * self.branch_factor ** (self.branch_depth - 1)

    def _ctx(self, gen_seed: int):
        from ..core.engine import SearchContext
        from ..models.sampling import SamplingConfig

        kw = dict(step=self.task.step, max_step_tokens=self.max_step_tokens, kv_budget_mb=self.kv_budget_mb)
        if self.policy_kind == "tree":
            from ..models.tree_policy import TreePolicy

            policy = TreePolicy(self.model, self.tokenizer, **kw)
        else:
            from ..models.hf_policy import HFPolicy

            policy = HFPolicy(self.model, self.tokenizer, **kw)
        return SearchContext(policy=policy, step=self.task.step, prompt=lambda p: p,
                             sampling=SamplingConfig(temperature=self.temperature, seed=gen_seed),
                             max_steps=self.max_steps)

    def grow(self, ctx, tree) -> None:
        """Grow every tree of the batch to its leaves (module docstring: the shape)."""
        B = tree.batch_size
        ar = torch.arange(B)[:, None]
        exp = ctx.expand(tree, torch.zeros((B, 1), dtype=torch.int32), self.tree_width, score=False)
        front = exp.children[:, 0, :].clone()
        surprisal = self._surprisal(tree, front, exp.logprob_sum[:, 0, :])
        for depth in range(1, self.max_steps):
            ok = front >= 0
            f = front.clamp_min(0).long()
            open_ = ok & ~tree.terminal[ar, f]
            if not bool(open_.any()):
                break
            if depth < self.branch_depth:
                wide = open_
                if self.branch_top > 0:  # entropy branching: the t most surprising open steps
                    s = torch.where(open_, surprisal, torch.full_like(surprisal, -math.inf))
                    t = min(self.branch_top, s.shape[1])
                    top = s.topk(t, dim=1).indices
                    wide = torch.zeros_like(open_).scatter_(1, top, True) & open_
                k = self.branch_factor
                e = ctx.expand(tree, torch.where(wide, front, -1), k, score=False)
                # unbranched open nodes continue with one child (in the first child's place)
                narrow = open_ & ~wide
                if bool(narrow.any()):
                    e1 = ctx.expand(tree, torch.where(narrow, front, -1), 1, score=False)
                    e.children[..., 0] = torch.where(narrow, e1.children[..., 0], e.children[..., 0])
                    e.logprob_sum[..., 0] = torch.where(narrow, e1.logprob_sum[..., 0], e.logprob_sum[..., 0])
                kids = torch.where(open_[..., None], e.children, torch.full_like(e.children, -1))
                # closed leaves keep their place (first column), so front stays a [B, F*k] frame
                kids[..., 0] = torch.where(open_, kids[..., 0], front)
                lp = e.logprob_sum
                front = kids.reshape(B, -1)
                surprisal = self._surprisal(tree, front, lp.reshape(B, -1))
            else:
                e = ctx.expand(tree, torch.where(open_, front, -1), 1, score=False)
                front = torch.where(open_, e.children[..., 0], front)

    @staticmethod
    def _surprisal(tree, nodes: torch.Tensor, logprob_sum: torch.Tensor) -> torch.Tensor:
        """[B, F] mean -log p per token of each node's step (-inf where no node)."""
        B = tree.batch_size
        ar = torch.arange(B)[:, None]
        n = tree.token_length[ar, nodes.clamp_min(0).long()].float().clamp_min(1.0)
        s = -logprob_sum.float() / n
        return torch.where((nodes >= 0) & torch.isfinite(s), s, torch.full_like(s, -math.inf))

    def _rewards(self, exs, texts) -> tuple[list[float], list[float]]:
        return verifier_rewards(self.task, self.reward_fn, exs, texts)

    def next_batch(self):
        tok = self.tokenizer
        idx = self.order.take(self.position, self.prompts_per_batch)
        gen_seed = self.seed * 1_000_003 + self.position
        self.position += self.prompts_per_batch
        was = self.model.training
        prompts = [tok.encode(self.task.prompt(self.examples[i].problem), add_special_tokens=True)
                   for i in idx]
        ctx = self._ctx(gen_seed)
        pol = ctx.policy
        A = max(self.tree_width, self.branch_factor)
        try:
            before = pol.counters.tokens_computed
            tree = ctx.new_tree(prompts, num_actions=A,
                                capacity=1 + self.num_generations * (self.max_steps + 1))
            self.grow(ctx, tree)
            computed = pol.counters.tokens_computed - before
            arena = pol.arena(tree)
            groups = []  # per tree: (parent list, token_length list, leaves, rows)
            for b in range(len(idx)):
                nn = int(tree.num_nodes[b])
                parent = tree.parent[b, :nn].tolist()
                tl = tree.token_length[b, :nn].tolist()
                has_child = torch.zeros(nn, dtype=torch.bool)
                has_child[torch.tensor([p for p in parent[1:]], dtype=torch.long)] = True
                leaves = [i for i in range(1, nn) if not bool(has_child[i])]
                rows = [arena.path_tokens(tree, b, leaf).tolist() for leaf in leaves]
                groups.append((parent, tl, leaves, rows))
            pol.release(tree)
        finally:
            self.model.train(was)
        exs, texts = [], []
        for b, (_, tl, _, rows) in enumerate(groups):
            for r in rows:
                exs.append(self.examples[idx[b]])
                comp = r[tl[0]:]
                texts.append(tok.decode([t for t in comp if t != tok.eos_token_id], skip_special_tokens=True))
        ver, rew = self._rewards(exs, texts)
        seqs, masks, advs, offsets = [], [], [], [0]
        j = 0
        iid = 0
        for parent, tl, leaves, rows in groups:
            lr = {leaf: rew[j + i] for i, leaf in enumerate(leaves)}
            seg = segment_advantages(parent, lr, self.shared_weight)
            tadv = leaf_token_advantages(parent, tl, leaves, seg["advantage"])
            for r, a in zip(rows, tadv):
                seqs.append(r)
                masks.append([0] * tl[0] + [1] * (len(r) - tl[0]))
                advs.append([0.0] * tl[0] + a)
                iid += len(r)
            j += len(leaves)
            offsets.append(len(seqs))
        T = max(len(r) for r in seqs)
        N = len(seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((N, T), pad, dtype=torch.long)
        am = torch.zeros((N, T), dtype=torch.long)
        cm = torch.zeros((N, T), dtype=torch.long)
        adv = torch.zeros((N, T), dtype=torch.float32)
        for n, (r, m, a) in enumerate(zip(seqs, masks, advs)):
            ids[n, :len(r)] = torch.tensor(r)
            am[n, :len(r)] = 1
            cm[n, :len(m)] = torch.tensor(m)
            adv[n, :len(a)] = torch.tensor(a)
        for k, v in (("tokens_computed", computed), ("iid_tokens", iid), ("leaves", N), ("trees", len(idx))):
            self._totals[k] += int(v)
        batch: dict[str, Any] = {
            "input_ids": ids, "attention_mask": am, "completion_mask": cm, "advantages": adv,
            "rewards": torch.tensor(rew), "group_offsets": torch.tensor(offsets),
            "max_completion_length": self.max_new_tokens,
            "accuracy": sum(ver) / max(len(ver), 1),
            "log": {"tokens_per_leaf": computed / max(N, 1), "iid_tokens_per_leaf": iid / max(N, 1),
                    "token_saving": 1.0 - computed / max(iid, 1), "leaves": N / max(len(idx), 1)},
        }
        return batch, list(idx)

    def totals(self) -> dict[str, float]:
        """Run totals: tokens computed vs the i.i.d. equivalent, leaves, trees, and per leaf."""
        t = dict(self._totals)
        leaves = max(t["leaves"], 1)
        return t | {"tokens_per_leaf": t["tokens_computed"] / leaves,
                    "iid_tokens_per_leaf": t["iid_tokens"] / leaves,
                    "token_saving": 1.0 - t["tokens_computed"] / max(t["iid_tokens"], 1)}

    @property
    def epoch(self) -> float:
        return self.position / len(self.examples)

    def state_dict(self) -> dict:
        return {"position": self.position, "num_prompts": len(self.examples), "seed": self.seed,
                "prompts_per_batch": self.prompts_per_batch, "tree_width": self.tree_width,
                "branch_factor": self.branch_factor, "branch_depth": self.branch_depth,
                "branch_top": self.branch_top, "totals": dict(self._totals)}

    def load_state_dict(self, state: Mapping) -> None:
        mine = self.state_dict()
        for k in ("num_prompts", "seed", "prompts_per_batch", "tree_width", "branch_factor",
                  "branch_depth", "branch_top"):
            if k in state and state[k] != mine[k]:
                raise ValueError(f"cannot resume: rollout settings changed ({k}: checkpoint "
                                 f"{state[k]!r}, now {mine[k]!r})")
        self.position = int(state["position"])
        self._totals = {k: int(v) for k, v in dict(state.get("totals") or self._totals).items()}
