"""Pure-torch reference of every tree op: the specification the C++, Triton and CUDA kernels match.

Vectorised over the B trees of a batch; the K leaves / K backups of one tree are processed one
after another in k order (that order is part of the contract: it fixes tie-breaks, slot numbers
and floating-point summation order). Runs on any device torch runs on.

Conventions shared by every backend (see lrm_engine/core/tree.py for the tree fields):

select (PUCT, the form of mctx's ``muzero_action_selection`` with ``qtransform_by_parent_and_siblings``)
    For tree b, leaf k = 0..K-1: descend from ROOT. At node n:
      * stop with (n, NO_ACTION) if n is terminal or none of its actions is valid (prior < 0 = invalid);
      * effective visits/sums include virtual visits ``vv`` of this call:
          N_n = visit_count[n] + vv[n];  S_n = value_sum[n] - virtual_loss * vv[n]
          for action a with child c:           n_a = visit_count[c] + vv[c];  s_a = value_sum[c] - vl * vv[c]
          for action a not expanded yet:       n_a = p_a;  s_a = -vl * p_a
            (p_a = number of earlier leaves j < k of this call equal to (n, a))
      * q_a = s_a / n_a for n_a > 0 ("visited"); v_n = S_n / N_n if N_n > 0 else 0
      * PUCT: lo = min(v_n, min_visited q), hi = max(v_n, max_visited q);
              qhat_a = (q_a - lo) / max(hi - lo, 1e-8) if visited else 0
              pb_c = c1 + log((N_n + c2 + 1) / c2)
              score_a = qhat_a + prior_a * sqrt(N_n) * pb_c / (n_a + 1)
        UCT:  score_a = q_a + uct_c * sqrt(log(max(N_n, 1)) / n_a) if n_a > 0 else +inf
      * invalid actions score -inf; a* = argmax, ties to the lowest index; arithmetic in float64.
      * if child of a* is not expanded: leaf = (n, a*); else descend into it.
    After leaf k is chosen, every node on its path from the leaf's node up to the root gets
    vv += 1 (virtual loss), so the K leaves of one tree spread out. The tree is left unchanged.

expand
    For k in order: (n, a) = (leaf_node, leaf_action); skip (-1) if either is negative. If the
    child already exists (expanded earlier, or by an earlier k of this call), return it; else take
    slot c = num_nodes[b]++, link it (parent, action_from_parent, depth + 1, children_index[n, a]),
    give it child_prior[b, k] as its children's priors, visits 0, value 0, terminal flag, and
    return c. Capacity is checked by the caller (`BatchedTree.ensure_capacity`).

backup
    For k in order, node m = nodes[b, k] >= 0: if a step score s (not NaN) is given and m has a
    parent p, set step_score[m] = s and the O(1) path aggregates from p:
      path_min = min(path_min[p], s), path_sum = path_sum[p] + s, path_sum_log = path_sum_log[p] + log(s),
      path_last = s, path_len = path_len[p] + 1.
    Then walk m -> root: visit_count += 1, value_sum += v, v = v * discount (float32).

topk_per_tree
    Per row: valid (and not NaN) entries first, by score descending, ties to the lowest index;
    rows with fewer than k valid entries are padded with index -1 and value -inf.

segment_reduce
    CSR segments [offsets[s], offsets[s+1]); ops min/max/sum/mean/last/prod. Empty segments give
    the identity (sum 0, prod 1, min +inf, max -inf) or NaN (mean, last).

group_normalize
    (x - mean_g) / (std_g + eps) per CSR group; std is unbiased (divides by n - 1, as torch.std
    and TRL's GRPO) unless ``unbiased=False`` (divides by n); a group of one has std 0, so its
    advantage is 0 (with eps > 0; eps = 0 gives 0/0 = NaN there, in every backend).
"""

from __future__ import annotations

import math

import torch

from lrm_engine.core.tree import BatchedTree

SEGMENT_OPS = ("min", "max", "sum", "mean", "last", "prod")
SELECT_RULES = ("puct", "uct")


def select(
    tree: BatchedTree,
    num_leaves: int,
    rule: str = "puct",
    c1: float = 1.25,
    c2: float = 19652.0,
    uct_c: float = math.sqrt(2.0),
    virtual_loss: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K leaves per tree. Returns (leaf_node [B, K] int32, leaf_action [B, K] int32)."""
    if rule not in SELECT_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(SELECT_RULES)}")
    B, A, K = tree.batch_size, tree.num_actions, num_leaves
    dev = tree.device
    ar = torch.arange(B, device=dev)
    actions = torch.arange(A, device=dev)
    vv = torch.zeros_like(tree.visit_count, dtype=torch.float64)  # virtual visits of this call
    visits = tree.visit_count.to(torch.float64)
    sums = tree.value_sum.to(torch.float64)
    priors = tree.children_prior.to(torch.float64)
    leaf_node = torch.full((B, K), BatchedTree.NO_PARENT, dtype=torch.long, device=dev)
    leaf_action = torch.full((B, K), BatchedTree.NO_ACTION, dtype=torch.long, device=dev)

    for k in range(K):
        node = torch.zeros(B, dtype=torch.long, device=dev)
        act = torch.full((B,), BatchedTree.NO_ACTION, dtype=torch.long, device=dev)
        active = torch.ones(B, dtype=torch.bool, device=dev)
        while bool(active.any()):
            prior = priors[ar, node]  # [B, A]
            valid = prior >= 0
            child = tree.children_index[ar, node].long()  # [B, A]
            expanded = child >= 0
            cidx = child.clamp_min(0)
            c_vis = torch.where(expanded, visits[ar[:, None], cidx] + vv[ar[:, None], cidx], 0.0)
            c_sum = torch.where(
                expanded, sums[ar[:, None], cidx] - virtual_loss * vv[ar[:, None], cidx], 0.0
            )
            if k > 0:
                pend = (
                    (leaf_node[:, :k, None] == node[:, None, None])
                    & (leaf_action[:, :k, None] == actions[None, None, :])
                ).sum(1).to(torch.float64)  # [B, A]
                c_vis = torch.where(expanded, c_vis, pend)
                c_sum = torch.where(expanded, c_sum, -virtual_loss * pend)
            n_vis = visits[ar, node] + vv[ar, node]
            n_sum = sums[ar, node] - virtual_loss * vv[ar, node]
            visited = c_vis > 0
            q = torch.where(visited, c_sum / c_vis.clamp_min(1e-300), 0.0)
            if rule == "puct":
                v_n = torch.where(n_vis > 0, n_sum / n_vis.clamp_min(1e-300), 0.0)
                vq = visited & valid
                lo = torch.minimum(v_n, torch.where(vq, q, math.inf).amin(-1))
                hi = torch.maximum(v_n, torch.where(vq, q, -math.inf).amax(-1))
                qhat = torch.where(
                    visited, (q - lo[:, None]) / torch.clamp(hi - lo, min=1e-8)[:, None], 0.0
                )
                pb_c = c1 + torch.log((n_vis + c2 + 1.0) / c2)
                score = qhat + prior * torch.sqrt(n_vis)[:, None] * pb_c[:, None] / (c_vis + 1.0)
            else:
                explore = uct_c * torch.sqrt(
                    torch.log(n_vis.clamp_min(1.0))[:, None] / c_vis.clamp_min(1e-300)
                )
                score = torch.where(visited, q + explore, math.inf)
            score = torch.where(valid, score, -math.inf)
            stop = tree.terminal[ar, node] | ~valid.any(-1)
            best = torch.argmax(score, dim=-1)  # first maximum
            nxt = child[ar, best]
            is_leaf = ~stop & (nxt < 0)
            done = active & (stop | is_leaf)
            act = torch.where(active & is_leaf, best, act)
            active = active & ~done
            node = torch.where(active, nxt, node)
        leaf_node[:, k] = node
        leaf_action[:, k] = act
        # Virtual loss on the path leaf -> root.
        n = node.clone()
        while bool((n >= 0).any()):
            on = n >= 0
            vv[ar[on], n[on]] += 1.0
            n = torch.where(on, tree.parent[ar, n.clamp_min(0)].long(), n)
    return leaf_node.to(torch.int32), leaf_action.to(torch.int32)


def expand(
    tree: BatchedTree,
    leaf_node: torch.Tensor,
    leaf_action: torch.Tensor,
    child_prior: torch.Tensor,
    terminal: torch.Tensor | None = None,
) -> torch.Tensor:
    """Create the children (leaf_node, leaf_action); returns new_node [B, K] int32 (-1 = none)."""
    B, K = leaf_node.shape
    dev = tree.device
    ar = torch.arange(B, device=dev)
    new = torch.full((B, K), BatchedTree.NO_PARENT, dtype=torch.int32, device=dev)
    for k in range(K):
        n = leaf_node[:, k].long()
        a = leaf_action[:, k].long()
        ok = (n >= 0) & (a >= 0)
        nc, ac = n.clamp_min(0), a.clamp_min(0)
        existing = tree.children_index[ar, nc, ac]
        fresh = ok & (existing < 0)
        c = tree.num_nodes.long()
        b, cf, nf, af = ar[fresh], c[fresh], nc[fresh], ac[fresh]
        tree.parent[b, cf] = nf.to(torch.int32)
        tree.action_from_parent[b, cf] = af.to(torch.int32)
        tree.depth[b, cf] = tree.depth[b, nf] + 1
        tree.children_index[b, nf, af] = cf.to(torch.int32)
        tree.children_index[b, cf] = BatchedTree.UNVISITED
        tree.children_prior[b, cf] = child_prior[fresh, k].to(torch.float32)
        tree.visit_count[b, cf] = 0
        tree.value_sum[b, cf] = 0.0
        tree.terminal[b, cf] = terminal[fresh, k] if terminal is not None else False
        tree.num_nodes[b] += 1
        new[:, k] = torch.where(fresh, c.to(torch.int32), torch.where(ok, existing, new[:, k]))
    return new


def backup(
    tree: BatchedTree,
    nodes: torch.Tensor,
    values: torch.Tensor,
    step_scores: torch.Tensor | None = None,
    discount: float = 1.0,
) -> None:
    """Back values up from nodes [B, K] to the roots; set step scores and path aggregates."""
    B, K = nodes.shape
    dev = tree.device
    ar = torch.arange(B, device=dev)
    gamma = torch.tensor(discount, dtype=torch.float32, device=dev)
    for k in range(K):
        m = nodes[:, k].long()
        ok = m >= 0
        mc = m.clamp_min(0)
        if step_scores is not None:
            s = step_scores[:, k].to(torch.float32)
            p = tree.parent[ar, mc].long()
            has = ok & ~torch.isnan(s) & (p >= 0)
            b, mm, pp, ss = ar[has], mc[has], p[has], s[has]
            tree.step_score[b, mm] = ss
            tree.path_min[b, mm] = torch.minimum(tree.path_min[b, pp], ss)
            tree.path_sum[b, mm] = tree.path_sum[b, pp] + ss
            tree.path_sum_log[b, mm] = tree.path_sum_log[b, pp] + torch.log(ss)
            tree.path_last[b, mm] = ss
            tree.path_len[b, mm] = tree.path_len[b, pp] + 1
        v = values[:, k].to(torch.float32).clone()
        n = torch.where(ok, m, torch.full_like(m, -1))
        while bool((n >= 0).any()):
            on = n >= 0
            b, nn = ar[on], n[on]
            tree.visit_count[b, nn] += 1
            tree.value_sum[b, nn] += v[on]
            v = v * gamma
            n = torch.where(on, tree.parent[ar, n.clamp_min(0)].long(), n)


def topk_per_tree(
    scores: torch.Tensor, k: int, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k per row of scores [B, M]: (values [B, k] float32, index [B, k] int32)."""
    B, M = scores.shape
    scores = scores.to(torch.float32)
    ok = ~torch.isnan(scores)
    if valid is not None:
        ok = ok & valid.to(torch.bool)
    key = torch.where(ok, scores, -math.inf)
    # Two stable sorts: by score descending, then valid entries before invalid ones.
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    order = torch.gather(
        order, 1, torch.sort((~torch.gather(ok, 1, order)).to(torch.uint8), dim=1, stable=True).indices
    )
    kk = min(k, M)
    idx = order[:, :kk]
    vals = torch.gather(key, 1, idx)
    keep = torch.gather(ok, 1, idx)
    out_v = torch.full((B, k), -math.inf, dtype=torch.float32, device=scores.device)
    out_i = torch.full((B, k), -1, dtype=torch.int32, device=scores.device)
    out_v[:, :kk] = torch.where(keep, vals, -math.inf)
    out_i[:, :kk] = torch.where(keep, idx, -1).to(torch.int32)
    return out_v, out_i


def segment_reduce(values: torch.Tensor, offsets: torch.Tensor, op: str) -> torch.Tensor:
    """Reduce each CSR segment of values [T]; offsets [S + 1] int64. Returns [S] float32."""
    if op not in SEGMENT_OPS:
        raise ValueError(f"unknown segment op {op!r}; known: {', '.join(SEGMENT_OPS)}")
    values = values.to(torch.float32)
    offsets = offsets.long()
    S = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    seg = torch.repeat_interleave(torch.arange(S, device=values.device), lengths)
    vals = values[offsets[0]: offsets[-1]]
    if op == "last":
        last = (
            values[(offsets[1:] - 1).clamp_min(0)]
            if values.numel()
            else torch.zeros(S, device=values.device)
        )
        return torch.where(lengths > 0, last, math.nan).to(torch.float32)
    if op == "mean":
        total = torch.zeros(S, dtype=torch.float32, device=values.device).index_add_(0, seg, vals)
        return torch.where(lengths > 0, total / lengths.clamp_min(1), math.nan).to(torch.float32)
    identity = {"sum": 0.0, "prod": 1.0, "min": math.inf, "max": -math.inf}[op]
    reduce = {"sum": "sum", "prod": "prod", "min": "amin", "max": "amax"}[op]
    out = torch.full((S,), identity, dtype=torch.float32, device=values.device)
    return out.scatter_reduce(0, seg, vals, reduce=reduce, include_self=True)


def group_normalize(
    x: torch.Tensor, offsets: torch.Tensor, eps: float = 1e-4, unbiased: bool = True
) -> torch.Tensor:
    """(x - mean_g) / (std_g + eps) per CSR group of x [T]; offsets [G + 1] int64."""
    x = x.to(torch.float32)
    offsets = offsets.long()
    G = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]
    seg = torch.repeat_interleave(torch.arange(G, device=x.device), lengths)
    xs = x[offsets[0]: offsets[-1]]
    n = lengths.to(torch.float32)
    mean = torch.zeros(G, device=x.device).index_add_(0, seg, xs) / n.clamp_min(1)
    dev2 = (xs - mean[seg]) ** 2
    ss = torch.zeros(G, device=x.device).index_add_(0, seg, dev2)
    denom = (n - 1) if unbiased else n
    std = torch.where(lengths > 1, torch.sqrt(ss / denom.clamp_min(1)), 0.0)
    out = x.clone()
    out[offsets[0]: offsets[-1]] = (xs - mean[seg]) / (std[seg] + eps)
    return out
