"""`mcts`: PUCT (or UCT) Monte-Carlo tree search over reasoning steps, batched across problems.

Each iteration, for every tree at once:

1. select — the core `select` op (``rule``: PUCT with ``c1``/``c2``, or UCT with ``uct_c``;
   ``num_leaves`` leaves per tree with virtual loss so they spread out) returns (node, action) pairs whose action has no child yet, or (node, -1) for a
   terminal / exhausted node.
2. expand — a policy expands a node once with all its ``k`` children (the HF policies write
   the children's priors, softmax of their step log-probabilities, into ``children_prior`` and
   mark actions k..A-1 invalid), so the selected *node* is expanded (each node once per call,
   duplicates dropped) and the child at the selected action becomes the leaf of that
   simulation. One ``SearchContext.expand`` call for all selected nodes of all problems: one
   policy call and one PRM call, which scores every new child. ``prior=logprob`` writes the
   priors from the returned log-probabilities (for policies that do not write them, like the
   scripted test policy); ``uniform`` ignores them. Actions left without a child and nodes at
   ``ctx.max_steps`` are marked invalid, so `select` never asks for them again.
3. evaluate — every new child is evaluated once: its value is the aggregated PRM score of its
   path (``ctx.aggregation``); at a terminal node, ``terminal_value=last`` takes the reward
   model's score of the final step instead (an ORM's verdict on the whole solution). With
   ``value=rollout`` the selected leaf is instead valued by a rollout to the end of a solution
   scored by the PRM (aggregate at its end): the rollout follows the most likely child, and since
   a node is expanded once with all its children, each rollout node is expanded with its k
   children like any other (they stay in the tree, selectable, and the rollout's nodes carry its
   value). Never the ground truth: searches only see Problems.
4. backup — `SearchContext.expand` backs every new child up through the core `backup` op (one
   visit each); the value it carries is then set to the evaluation above by adding the
   difference along the path (values only, no extra visit). A simulation that ends on a
   terminal node backs its value up once more (`backup`).

The final answer follows the most-visited children from the root (``final=visits``, ties to
the higher prior) or the children with the best mean value (``final=value``); a path that ends
before a solution does is completed greedily. ``choice=majority|weighted`` votes over every
solution in the tree instead (self-consistency on top of MCTS); ``best`` keeps the final path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lrm_builtin.search.common import check_choice, finish
from lrm_builtin.search.family_util import gather, is_terminal, need_reward
from lrm_builtin.search.lookahead import roll_greedy
from lrm_engine.core.tree import BatchedTree


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown search.{name} {value!r}; choose one of: {', '.join(allowed)}")


def add_values(tree: BatchedTree, nodes: torch.Tensor, delta: torch.Tensor) -> None:
    """Add delta [B, M] to value_sum of nodes [B, M] (-1 = none) and all their ancestors."""
    B = tree.batch_size
    bi = torch.arange(B, device=tree.device)[:, None].expand_as(nodes)
    n = nodes.long().clone()
    d = delta.to(tree.value_sum.dtype)
    while bool((n >= 0).any()):
        on = n >= 0
        tree.value_sum.index_put_((bi[on], n[on]), d[on], accumulate=True)
        n = torch.where(on, tree.parent.gather(1, n.clamp_min(0)).long(), n)


@dataclass
class MCTSSearch:
    """MCTS over steps (search.rule: puct | uct): select / expand / evaluate (PRM or rollout) / backup."""

    # Simulations (selected leaves) per tree; iterations = ceil(simulations / num_leaves).
    simulations: int = 16
    # Leaves selected per tree per iteration (K), spread by virtual loss.
    num_leaves: int = 1
    # Children generated when a node is expanded.
    k: int = 4
    # Selection rule of the select op: puct (mctx, prior-weighted) or uct (UCB1, priors unused).
    rule: str = "puct"
    # PUCT exploration constants (mctx's c1 and c2).
    c1: float = 1.25
    c2: float = 19652.0
    # UCT exploration constant c of q + c * sqrt(ln N / n).
    uct_c: float = math.sqrt(2.0)
    # Virtual loss per pending visit while K leaves are selected.
    virtual_loss: float = 1.0
    # Action priors: policy (as the policy wrote them), logprob (softmax of step log-probs), uniform.
    prior: str = "policy"
    # Leaf value: prm (aggregated PRM path score) or rollout (greedy rollout scored by the PRM).
    value: str = "prm"
    # Value of a terminal node: aggregate (path aggregate) or last (reward of the final step, ORM-style).
    terminal_value: str = "aggregate"
    # Final path: visits (most-visited children) or value (best mean value children).
    final: str = "visits"
    # best (the final path) or majority / weighted vote over every solution in the tree.
    choice: str = "best"
    name: str = "mcts"
    # Ranks unfinished paths by step scores (an outcome-only reward is refused).
    uses_step_scores = True

    def __post_init__(self):
        check_choice(self.choice)
        _check("rule", self.rule, ("puct", "uct"))
        _check("prior", self.prior, ("policy", "logprob", "uniform"))
        _check("value", self.value, ("prm", "rollout"))
        _check("terminal_value", self.terminal_value, ("aggregate", "last"))
        _check("final", self.final, ("visits", "value"))
        if self.simulations < 1 or self.num_leaves < 1 or self.k < 1:
            raise ValueError("search.simulations, search.num_leaves and search.k must be >= 1")

    # ------------------------------------------------------------------ pieces
    def _after_expand(self, ctx, tree, nodes: torch.Tensor, exp) -> None:
        """Priors of the expanded nodes; invalid actions; depth limit on the new children."""
        bi, ji = (nodes >= 0).nonzero(as_tuple=True)
        if bi.numel() == 0:
            return
        nn = nodes[bi, ji].long()
        kids = tree.children_index[bi, nn]  # [P, A]
        pri = tree.children_prior[bi, nn].clone()
        k = exp.logprob_sum.shape[-1]
        if self.prior != "policy":
            made = kids[:, :k] >= 0
            if self.prior == "logprob":
                lp = exp.logprob_sum[bi, ji]
                lp = torch.where(made & ~torch.isnan(lp), lp, -math.inf)
                p = torch.softmax(lp, -1)
            else:
                p = made.float() / made.sum(-1, keepdim=True).clamp_min(1)
            pri[:, :k] = torch.nan_to_num(p, nan=0.0)
        pri = torch.where(kids >= 0, pri, torch.full_like(pri, BatchedTree.INVALID_PRIOR))
        tree.children_prior[bi, nn] = pri
        # Children at the step limit are never expanded: all their actions invalid.
        c = exp.pairs
        if c.numel():
            deep = tree.depth[c[:, 0], c[:, 1]] >= ctx.max_steps
            tree.children_prior[c[deep, 0], c[deep, 1]] = BatchedTree.INVALID_PRIOR

    def _node_value(self, ctx, tree, nodes: torch.Tensor) -> torch.Tensor:
        """Evaluation [B, M] of nodes: path aggregate, or last step at terminals if asked."""
        v = gather(ctx.path_scores(tree), nodes, float("nan"))
        if self.terminal_value == "last":
            v = torch.where(is_terminal(tree, nodes), gather(tree.step_score, nodes, float("nan")), v)
        return torch.nan_to_num(v, nan=0.0)

    @staticmethod
    def _pairs_grid(tree, pairs: torch.Tensor) -> torch.Tensor:
        """[P, 2] (b, n) pairs -> [B, M] node grid (-1 padded)."""
        B = tree.batch_size
        counts = torch.bincount(pairs[:, 0], minlength=B)
        M = int(counts.max()) if pairs.numel() else 0
        grid = torch.full((B, max(M, 1)), -1, dtype=torch.long)
        if pairs.numel():
            order = torch.argsort(pairs[:, 0], stable=True)
            p = pairs[order]
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(p.shape[0]) - starts[p[:, 0]]
            grid[p[:, 0], rank] = p[:, 1]
        return grid

    def _set_values(self, tree, own: torch.Tensor, nodes: torch.Tensor, target: torch.Tensor) -> None:
        """Make the evaluation each node carries in value_sum equal to target (no extra visits)."""
        ok = nodes >= 0
        cur = gather(own, nodes, 0.0)
        delta = torch.where(ok, target - cur, torch.zeros_like(target))
        add_values(tree, nodes, delta)
        bi, ji = ok.nonzero(as_tuple=True)
        own[bi, nodes[bi, ji].long()] = target[bi, ji]

    def _expand(self, ctx, tree, own, nodes, k, sampling=None):
        """ctx.expand + bookkeeping; returns (exp, own grown to capacity, new-node grid)."""
        exp = ctx.expand(tree, nodes.to(torch.int32), k, sampling=sampling)
        if own.shape[1] < tree.capacity:
            own = torch.cat([own, own.new_zeros(own.shape[0], tree.capacity - own.shape[1])], 1)
        self._after_expand(ctx, tree, nodes, exp)
        if exp.pairs.numel():  # what ctx.expand backed up for each new child
            own[exp.pairs[:, 0], exp.pairs[:, 1]] = torch.nan_to_num(exp.scores, nan=0.0)
        return exp, own, self._pairs_grid(tree, exp.pairs)

    # ------------------------------------------------------------------ search
    def run(self, ctx, problems):
        need_reward(ctx, self.name)
        K, k = self.num_leaves, self.k
        iters = -(-self.simulations // K)
        tree = ctx.new_tree(problems, num_actions=k, capacity=1 + k * (1 + min(iters * K, 64)))
        B = tree.batch_size
        ar = torch.arange(B)[:, None]
        own = torch.zeros((B, tree.capacity))  # each node's evaluation as carried in value_sum
        earlier = torch.ones((K, K), dtype=torch.bool).tril(-1)
        for _ in range(iters):
            ln, la = ctx.ops.select(tree, K, rule=self.rule, c1=self.c1, c2=self.c2,
                                    uct_c=self.uct_c, virtual_loss=self.virtual_loss)
            ln, la = ln.long(), la.long()
            dup = ((ln[:, :, None] == ln[:, None, :]) & earlier).any(-1)
            nodes = torch.where((la >= 0) & ~dup & (ln >= 0), ln, -1)
            if bool((nodes >= 0).any()):
                _, own, new = self._expand(ctx, tree, own, nodes, k)
                self._set_values(tree, own, new, self._node_value(ctx, tree, new))
            leaf = torch.where(la >= 0, tree.children_index[ar, ln.clamp_min(0), la.clamp_min(0)].long(), -1)
            if self.value == "rollout":
                own = self._rollout(ctx, tree, own, leaf)
            # Simulations that ended on a terminal / exhausted node back its value up again.
            again = torch.where(la < 0, ln, -1)
            if bool((again >= 0).any()):
                ctx.ops.backup(tree, again.to(torch.int32).contiguous(),
                               gather(own, again, 0.0).contiguous(), None, 1.0)
        out = self._answer(ctx, tree, problems)
        ctx.policy.release(tree)
        return out

    def _rollout(self, ctx, tree, own, leaf: torch.Tensor):
        """Rollouts from the non-terminal leaves [B, K] to the end of a solution; the leaf and
        the rollout's steps all carry the value of the rollout's end.

        A node is expanded once, with all its children, so every node on a rollout is expanded
        with its ``k`` children like any other (the siblings are evaluated as usual and stay
        selectable); the rollout follows the policy's most likely child (greedy among them).
        """
        K = leaf.shape[1]
        earlier = torch.ones((K, K), dtype=torch.bool).tril(-1)
        dup = ((leaf[:, :, None] == leaf[:, None, :]) & earlier).any(-1)
        tip = torch.where(is_terminal(tree, leaf) | dup, -1, leaf)
        end = tip.clone()
        made = [tip.clone()]
        while True:
            active = (tip >= 0) & ~is_terminal(tree, tip) & (gather(tree.depth, tip) < ctx.max_steps)
            if not bool(active.any()):
                break
            exp, own, new = self._expand(ctx, tree, own, torch.where(active, tip, -1), self.k)
            self._set_values(tree, own, new, self._node_value(ctx, tree, new))
            lp = torch.where(exp.children >= 0, torch.nan_to_num(exp.logprob_sum, nan=-math.inf),
                             -math.inf)
            child = exp.children.gather(2, lp.argmax(-1, keepdim=True))[..., 0].long()
            child = torch.where(active, child, -1)
            end = torch.where(child >= 0, child, end)
            tip = torch.where(active, child, tip)  # a tip the policy gave no child stops
            made.append(child)
        R = self._node_value(ctx, tree, end)
        for nodes in made:
            self._set_values(tree, own, nodes, torch.where(nodes >= 0, R, 0.0))
        return own

    def _answer(self, ctx, tree, problems):
        B = tree.batch_size
        ar = torch.arange(B)
        node = torch.zeros(B, dtype=torch.long)
        value = tree.node_value()
        for _ in range(int(tree.depth.max()) + 1):
            ch = tree.children_index[ar, node].long()  # [B, A]
            exists = ch >= 0
            if not bool(exists.any()):
                break
            cv = tree.visit_count.gather(1, ch.clamp_min(0)).float()
            if self.final == "visits":
                key = cv + 0.5 * tree.children_prior[ar, node].clamp(0, 1)
            else:
                key = value.gather(1, ch.clamp_min(0)) + 1e-6 * cv
            key = torch.where(exists, key, -math.inf)
            nxt = ch[ar, key.argmax(-1)]
            go = exists.any(-1) & ~tree.terminal[ar, node]
            node = torch.where(go, nxt, node)
        chosen = roll_greedy(ctx, tree, node[:, None].to(torch.int32), ctx.max_steps)[:, 0]
        leaves = []
        for b in range(B):
            n = int(tree.num_nodes[b])
            others = (tree.terminal[b, 1:n].nonzero().squeeze(1) + 1).tolist()
            c = int(chosen[b])
            leaves.append([c] + [x for x in others if x != c])
        out = finish(ctx, tree, problems, leaves, self.choice)
        if self.choice == "best":  # the final path, not the highest aggregate
            for r in out:
                c = r.candidates[0]
                r.answer, r.solution = c["answer"], c["text"]
                r.score = math.nan if c["score"] is None else float(c["score"])
                r.steps = ctx.step.split_steps(c["text"])
        return out
