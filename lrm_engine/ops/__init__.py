"""Tree ops behind one dispatcher: reference (torch), cpp (lrm_engine._C), triton, cuda.

The module-level functions take ``backend=`` ("auto" by default, resolved per tree device) and
forward to that backend; hot loops should resolve a backend once with `get_backend` and call its
methods directly.
"""

from __future__ import annotations

from typing import Any

from lrm_engine.ops.dispatch import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    get_backend,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "select",
    "expand",
    "backup",
    "topk_per_tree",
    "segment_reduce",
    "group_normalize",
]


def _b(backend: Any, device: Any) -> Any:
    return get_backend(backend, device) if isinstance(backend, str) else backend


def select(tree, num_leaves: int = 1, *, backend: Any = "auto", **kw):
    """K leaves per tree: (leaf_node [B, K] int32, leaf_action [B, K] int32)."""
    return _b(backend, tree.device).select(tree, num_leaves, **kw)


def expand(tree, leaf_node, leaf_action, child_prior, terminal=None, *, grow: bool = False, backend: Any = "auto"):
    """Create children; checks capacity first (grow or raise naming `search.max_nodes`)."""
    tree.ensure_capacity(leaf_node.shape[1], grow=grow)
    return _b(backend, tree.device).expand(tree, leaf_node, leaf_action, child_prior, terminal)


def backup(tree, nodes, values, step_scores=None, discount: float = 1.0, *, backend: Any = "auto"):
    """Back values up to the roots; set step scores and O(1) path aggregates."""
    return _b(backend, tree.device).backup(tree, nodes, values, step_scores, discount)


def topk_per_tree(scores, k: int, valid=None, *, backend: Any = "auto"):
    """Best k per row: (values [B, k] float32, index [B, k] int32)."""
    return _b(backend, scores.device).topk_per_tree(scores, k, valid)


def segment_reduce(values, offsets, op: str, *, backend: Any = "auto"):
    """min/max/sum/mean/last/prod per CSR segment."""
    return _b(backend, values.device).segment_reduce(values, offsets, op)


def group_normalize(x, offsets, eps: float = 1e-4, unbiased: bool = True, *, backend: Any = "auto"):
    """(x - mean_g) / (std_g + eps) per CSR group."""
    return _b(backend, x.device).group_normalize(x, offsets, eps, unbiased)
