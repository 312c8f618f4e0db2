"""A searched tree of one problem as a compact JSON-able dict (``SearchResult.tree``).

Built from the :class:`~lrm_engine.core.tree.BatchedTree` and the policy *before* the policy
releases the tree (``common.finish`` does it when ``SearchContext.export_trees`` is set)::

    {"format": "lrm-tree/1", "id": "p3", "question": "...", "aggregation": "min",
     "answer": "42", "score": 0.91, "chosen": 17, "num_nodes": 25,
     "nodes": [{"id": 0, "depth": 0, "text": "", "visits": 9, "value": 0.5},
               {"id": 1, "parent": 0, "depth": 1, "text": "2 + 3 = 5\\n", "score": 0.93,
                "path_score": 0.93, "visits": 3, "value": 0.81, "prior": 0.25}, ...,
               {"id": 17, "parent": 9, ..., "terminal": true, "answer": "42",
                "candidate": true, "chosen": true}]}

Node ids are the tree's slots (creation order, so a parent's id is below its children's).
Keys are left out where they carry nothing (no parent at the root, NaN scores, false flags),
floats are rounded to 4 decimals. ``text`` is the node's own step (the difference between the
policy's text of the node and of its parent; the root's is empty, the problem is in
``question``). ``score`` is the reward model's step score, ``path_score`` the aggregate of the
path's step scores (``aggregation``), ``value`` the mean backed-up value (visits > 0).
``chosen`` marks every node on the root-to-answer path of the final solution.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

FORMAT = "lrm-tree/1"


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 4)


def step_texts(ctx, tree, b: int, n_nodes: int, parents: Sequence[int]) -> tuple[list[str], list[str]]:
    """Each node's own step text (policy text of the node minus that of its parent), and each
    node's full text from the root.

    Falls back to decoding the node's own tokens from the policy's token arena (when the
    policy has one and a tokenizer) if a parent's text is not a prefix of its child's.
    """
    full: list[str] = [""] * n_nodes
    out: list[str] = [""] * n_nodes
    for n in range(1, n_nodes):
        try:
            full[n] = ctx.text(tree, b, n)
        except Exception:  # a slot the policy does not know (never expanded by it)
            full[n] = ""
        p = parents[n]
        prev = full[p] if 0 <= p < n_nodes else ""
        if full[n].startswith(prev):
            out[n] = full[n][len(prev):]
        else:
            out[n] = _own_tokens_text(ctx, tree, b, n, default=full[n])
    return out, full


def _own_tokens_text(ctx, tree, b: int, n: int, default: str) -> str:
    policy = ctx.policy
    arena, tok = getattr(policy, "arena", None), getattr(policy, "tokenizer", None)
    if not callable(arena) or tok is None:
        return default
    try:
        return tok.decode(arena(tree).node_tokens(tree, b, n).tolist())
    except Exception:
        return default


def tree_to_dict(
    ctx,
    tree,
    b: int,
    problem: Any = None,
    chosen: int | None = None,
    candidates: Iterable[int] = (),
    answer: str | None = None,
    score: float | None = None,
    path_scores: Any = None,
) -> dict[str, Any]:
    """The dict of tree ``b`` (see the module docstring). ``chosen``: the final solution's node.

    path_scores: [B, N] aggregated scores (``ctx.path_scores(tree)``), computed if not given.
    """
    n_nodes = int(tree.num_nodes[b])
    if path_scores is None:
        path_scores = ctx.path_scores(tree)
    parents = tree.parent[b, :n_nodes].tolist()
    depth = tree.depth[b, :n_nodes].tolist()
    step = tree.step_score[b, :n_nodes].tolist()
    agg = path_scores[b, :n_nodes].tolist()
    visits = tree.visit_count[b, :n_nodes].tolist()
    value = tree.node_value()[b, :n_nodes].tolist()
    terminal = tree.terminal[b, :n_nodes].tolist()
    action = tree.action_from_parent[b, :n_nodes].tolist()
    texts, full = step_texts(ctx, tree, b, n_nodes, parents)
    cand = {int(c) for c in candidates}
    nodes = []
    for n in range(n_nodes):
        node: dict[str, Any] = {"id": n}
        p = int(parents[n])
        if p >= 0:
            node["parent"] = p
        node["depth"] = int(depth[n])
        node["text"] = texts[n]
        for key, x in (("score", step[n]), ("path_score", agg[n])):
            v = _num(x)
            if v is not None:
                node[key] = v
        node["visits"] = int(visits[n])
        if visits[n] > 0:
            node["value"] = _num(value[n])
        if p >= 0 and 0 <= action[n] < tree.num_actions:
            prior = _num(tree.children_prior[b, p, action[n]])
            if prior is not None and prior >= 0:
                node["prior"] = prior
        if terminal[n]:
            node["terminal"] = True
        if n in cand:
            node["candidate"] = True
        if terminal[n] or n in cand:
            a = ctx.answer(full[n]) if n > 0 else None
            if a is not None:
                node["answer"] = a
        nodes.append(node)
    out: dict[str, Any] = {
        "format": FORMAT,
        "id": None if problem is None else str(getattr(problem, "id", problem)),
        "question": getattr(problem, "question", None),
        "aggregation": getattr(ctx, "aggregation", None),
        "answer": answer,
        "score": None if score is None else _num(score),
        "chosen": None,
        "num_nodes": n_nodes,
        "nodes": nodes,
    }
    mark_chosen(out, chosen)
    return out


def chosen_path(tree_dict: dict[str, Any], node: int | None) -> list[int]:
    """Node ids from the root to ``node`` (empty if ``node`` is None or not in the tree)."""
    nodes = tree_dict["nodes"]
    if node is None or not 0 <= int(node) < len(nodes):
        return []
    path, n = [], int(node)
    while n is not None and n >= 0:
        path.append(n)
        n = nodes[n].get("parent")
    return path[::-1]


def mark_chosen(tree_dict: dict[str, Any], node: int | None) -> None:
    """Set ``chosen`` on the root-to-``node`` path (and clear it elsewhere)."""
    for nd in tree_dict["nodes"]:
        nd.pop("chosen", None)
    path = chosen_path(tree_dict, node)
    for n in path:
        tree_dict["nodes"][n]["chosen"] = True
    tree_dict["chosen"] = path[-1] if path else None


def sync_chosen(result) -> None:
    """Keep a SearchResult's tree in step with its final choice.

    A search may change its answer after ``finish`` built the tree (mcts with ``choice=best``
    takes the final path, not the best aggregate): re-mark the chosen path at the candidate
    whose text is the final solution, and copy the final answer and score.
    """
    t = getattr(result, "tree", None)
    if not t or "nodes" not in t:
        return
    t["answer"] = result.answer
    t["score"] = None if result.score is None else _num(result.score)
    node_of = {}
    for c in result.candidates or ():
        if isinstance(c, dict) and c.get("node") is not None:
            node_of.setdefault(c.get("text"), int(c["node"]))
    cur = t.get("chosen")
    cur_text = next((c.get("text") for c in result.candidates or ()
                     if isinstance(c, dict) and c.get("node") == cur), None)
    if cur_text != result.solution and result.solution in node_of:
        mark_chosen(t, node_of[result.solution])
