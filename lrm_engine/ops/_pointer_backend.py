"""Shared Python side of the compiled backends (cpp: lrm_engine._C, cuda: lrm_engine._C_cuda).

Both extensions take raw data pointers (``tensor.data_ptr()``) and sizes, so this wrapper owns
every check, kept O(1) per call: the 16 tree tensors are validated once per tree (a cache entry
per live tree, refreshed when `BatchedTree.grow` swaps its tensors) and each call checks
only its own inputs' device, dtype, shape and contiguity. Inputs of another dtype are converted as
the reference converts them (``.to(float32)``, ``.long()``); the tree itself is never copied.

Semantics: lrm_engine/ops/reference.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import math
import operator
import weakref
from typing import Any

import torch

from lrm_engine.core.tree import BatchedTree

# Order of the pointer tuple handed to TreeView (csrc/tree_view_binding.h).
TREE_FIELDS = (
    "parent",
    "action_from_parent",
    "depth",
    "children_index",
    "children_prior",
    "visit_count",
    "value_sum",
    "step_score",
    "path_min",
    "path_sum",
    "path_sum_log",
    "path_last",
    "path_len",
    "terminal",
    "num_nodes",
    "vvisit",
)
_I32, _F32, _I64, _BOOL = torch.int32, torch.float32, torch.int64, torch.bool
FIELD_DTYPES = {
    "parent": _I32,
    "action_from_parent": _I32,
    "depth": _I32,
    "children_index": _I32,
    "children_prior": _F32,
    "visit_count": _I32,
    "value_sum": _F32,
    "step_score": _F32,
    "path_min": _F32,
    "path_sum": _F32,
    "path_sum_log": _F32,
    "path_last": _F32,
    "path_len": _I32,
    "terminal": _BOOL,
    "num_nodes": _I32,
    "vvisit": _I32,
}
# The 16 fields of a tree in TREE_FIELDS order, in one C-level call.
_TREE_TENSORS = operator.attrgetter(*TREE_FIELDS)
_is = operator.is_
_Tensor = torch.Tensor
RULES = {"puct": 0, "uct": 1}
SEGMENT_OPS = {"min": 0, "max": 1, "sum": 2, "mean": 3, "last": 4, "prod": 5}


class PointerBackend(ABC):
    """The six tree ops over a compiled module ``self._m`` taking raw pointers.

    Subclasses set ``name``, ``_m`` and implement ``_check_device`` (raise for a tensor the
    module cannot read), ``_extra`` (trailing arguments of every kernel call, e.g. the CUDA
    stream) and ``_device`` (where outputs are allocated).
    """

    name = "?"
    _m: Any
    # True when `_extra(device)` returns the same tuple on every call (cached per tree then).
    _extra_is_static = False

    def __init__(self) -> None:
        # id(tree) -> (tensors, parent data_ptr, TreeView, device, weakref to the tree, extra args)
        self._views: dict[int, tuple] = {}

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _check_device(self, t: torch.Tensor, what: str, device: torch.device | None) -> None:
        """Raise if ``t`` cannot be used by this backend on ``device``."""

    def _extra(self, device: torch.device) -> tuple:
        return ()

    # ------------------------------------------------------------------ helpers
    def _input(self, t: Any, dtype: torch.dtype, shape: tuple, what: str, device) -> torch.Tensor:
        """A read-only input as a contiguous tensor of dtype and shape on the tree's device."""
        if type(t) is _Tensor and t.dtype is dtype and t.shape == shape and t.is_contiguous():
            self._check_device(t, what, device)  # the common case: nothing to convert
            return t
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t, device=device)
        self._check_device(t, what, device)
        if t.shape != shape:
            raise ValueError(f"{what} must have shape {list(shape)}, got {list(t.shape)}")
        if t.dtype is not dtype or not t.is_contiguous():
            t = t.to(dtype).contiguous()
        return t

    def _view(self, tree: BatchedTree):
        """The TreeView of `tree` (cached per live tree)."""
        return self._entry(tree)[2]

    def _entry(self, tree: BatchedTree) -> tuple:
        """Cache entry of `tree`: (tensors, parent data_ptr, TreeView, device, weakref, ext).

        `ext` is the tuple of trailing kernel arguments (`_extra(device)`) when it does not
        change between calls (`_extra_is_static`), else None.
        """
        ts = _TREE_TENSORS(tree)
        e = self._views.get(id(tree))
        # An entry holds the tensors themselves, so identity with them means the same tensors;
        # the data pointer check catches a storage swapped in place (set_, resize_).
        if e is not None and all(map(_is, ts, e[0])) and e[1] == ts[0].data_ptr():
            return e
        return self._new_entry(tree, ts, e)

    def _new_entry(self, tree: BatchedTree, ts: tuple, e) -> tuple:
        tid = id(tree)
        view = self._make_view(ts)
        if e is not None and e[4]() is tree:
            ref = e[4]
        else:  # one entry per live tree, dropped when the tree is garbage-collected
            views = self._views
            ref = weakref.ref(tree, lambda _r, tid=tid, views=views: views.pop(tid, None))
        dev = ts[0].device
        ext = self._extra(dev) if self._extra_is_static else None
        entry = (ts, ts[0].data_ptr(), view, dev, ref, ext)
        self._views[tid] = entry
        return entry

    def _make_view(self, ts: tuple):
        parent = ts[0]
        if parent.dim() != 2:
            raise ValueError(f"tree.parent must be [B, N], got shape {list(parent.shape)}")
        B, N = parent.shape
        A = ts[3].shape[-1] if ts[3].dim() == 3 else -1
        device = parent.device
        for name, t in zip(TREE_FIELDS, ts):
            self._check_device(t, f"tree.{name}", device)
            if t.dtype is not FIELD_DTYPES[name]:
                raise TypeError(
                    f"tree.{name} must be {FIELD_DTYPES[name]} for kernel backend {self.name!r}, got {t.dtype}"
                )
            if name == "num_nodes":
                want = (B,)
            elif name in ("children_index", "children_prior"):
                want = (B, N, A)
            else:
                want = (B, N)
            if tuple(t.shape) != want:
                raise ValueError(f"tree.{name} must have shape {list(want)}, got {list(t.shape)}")
            if not t.is_contiguous():
                raise ValueError(
                    f"tree.{name} must be contiguous for kernel backend {self.name!r} "
                    "(the kernels write it in place)"
                )
        return self._m.TreeView(tuple(t.data_ptr() for t in ts), B, N, A)

    # ------------------------------------------------------------------ tree ops
    def select(
        self,
        tree: BatchedTree,
        num_leaves: int,
        rule: str = "puct",
        c1: float = 1.25,
        c2: float = 19652.0,
        uct_c: float = math.sqrt(2.0),
        virtual_loss: float = 1.0,
        out: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See reference.select. `out`: optional (node, action) int32 [B, K] contiguous tensors
        on the tree's device to write the result into (returned); default: new tensors."""
        r = RULES.get(rule)
        if r is None:
            raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(RULES)}")
        _ts, _p, view, dev, _ref, ext = self._entry(tree)
        K = int(num_leaves)
        if K < 0:
            raise ValueError(f"num_leaves must be >= 0, got {K}")
        if out is None:
            node = torch.empty((view.B, K), dtype=_I32, device=dev)
            action = torch.empty_like(node)
        else:
            node, action = out
            self._output(node, (view.B, K), "out[0]", dev)
            self._output(action, (view.B, K), "out[1]", dev)
        self._m.select(
            view, K, r, float(c1), float(c2), float(uct_c), float(virtual_loss),
            node.data_ptr(), action.data_ptr(), *(self._extra(dev) if ext is None else ext),
        )
        return node, action

    def _output(self, t: Any, shape: tuple, what: str, device) -> None:
        """Checks a caller-provided int32 output buffer (written in place)."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
        self._check_device(t, what, device)
        if t.dtype is not _I32 or t.shape != shape or not t.is_contiguous():
            raise ValueError(
                f"{what} must be a contiguous int32 tensor of shape {list(shape)}, got "
                f"{t.dtype} {list(t.shape)}{'' if t.is_contiguous() else ' (not contiguous)'}"
            )

    def expand(
        self,
        tree: BatchedTree,
        leaf_node: torch.Tensor,
        leaf_action: torch.Tensor,
        child_prior: torch.Tensor,
        terminal: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See reference.expand. `out`: optional int32 [B, K] contiguous tensor on the tree's
        device for the new node indices (returned); default: a new tensor."""
        _ts, _p, view, dev, _ref, ext = self._entry(tree)
        B, A = view.B, view.A
        if leaf_node.dim() != 2:
            raise ValueError(f"leaf_node must be [B, K], got shape {list(leaf_node.shape)}")
        K = leaf_node.shape[1]
        bk = (B, K)
        leaf_node = self._input(leaf_node, _I32, bk, "leaf_node", dev)
        leaf_action = self._input(leaf_action, _I32, bk, "leaf_action", dev)
        child_prior = self._input(child_prior, _F32, (B, K, A), "child_prior", dev)
        term = 0
        if terminal is not None:
            terminal = self._input(terminal, _BOOL, bk, "terminal", dev)
            term = terminal.data_ptr()
        if out is None:
            new = torch.empty(bk, dtype=_I32, device=dev)
        else:
            self._output(out, bk, "out", dev)
            new = out
        self._m.expand(
            view, K, leaf_node.data_ptr(), leaf_action.data_ptr(), child_prior.data_ptr(), term,
            new.data_ptr(), *(self._extra(dev) if ext is None else ext),
        )
        return new

    def backup(
        self,
        tree: BatchedTree,
        nodes: torch.Tensor,
        values: torch.Tensor,
        step_scores: torch.Tensor | None = None,
        discount: float = 1.0,
    ) -> None:
        _ts, _p, view, dev, _ref, ext = self._entry(tree)
        if nodes.dim() != 2:
            raise ValueError(f"nodes must be [B, K], got shape {list(nodes.shape)}")
        bk = (view.B, nodes.shape[1])
        nodes = self._input(nodes, _I32, bk, "nodes", dev)
        values = self._input(values, _F32, bk, "values", dev)
        sp = 0
        if step_scores is not None:
            step_scores = self._input(step_scores, _F32, bk, "step_scores", dev)
            sp = step_scores.data_ptr()
        self._m.backup(
            view, bk[1], nodes.data_ptr(), values.data_ptr(), sp, float(discount),
            *(self._extra(dev) if ext is None else ext),
        )

    # ------------------------------------------------------------------ flat ops
    def topk_per_tree(
        self, scores: torch.Tensor, k: int, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if scores.dim() != 2:
            raise ValueError(f"scores must be [B, M], got shape {list(scores.shape)}")
        k = int(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        B, M = scores.shape
        dev = scores.device
        scores = self._input(scores, _F32, (B, M), "scores", dev)
        vp = 0
        if valid is not None:
            valid = self._input(valid, _BOOL, (B, M), "valid", dev)
            vp = valid.data_ptr()
        out_v = torch.empty(B, k, dtype=_F32, device=dev)
        out_i = torch.empty(B, k, dtype=_I32, device=dev)
        self._m.topk_per_tree(
            scores.data_ptr(), vp, B, M, k, out_v.data_ptr(), out_i.data_ptr(), *self._extra(dev)
        )
        return out_v, out_i

    def segment_reduce(self, values: torch.Tensor, offsets: torch.Tensor, op: str) -> torch.Tensor:
        o = SEGMENT_OPS.get(op)
        if o is None:
            raise ValueError(f"unknown segment op {op!r}; known: {', '.join(SEGMENT_OPS)}")
        values, offsets = self._csr(values, offsets, "values")
        S = offsets.numel() - 1
        dev = values.device
        out = torch.empty(S, dtype=_F32, device=dev)
        self._m.segment_reduce(
            values.data_ptr(), values.numel(), offsets.data_ptr(), S, o, out.data_ptr(), *self._extra(dev)
        )
        return out

    def group_normalize(
        self, x: torch.Tensor, offsets: torch.Tensor, eps: float = 1e-4, unbiased: bool = True
    ) -> torch.Tensor:
        x, offsets = self._csr(x, offsets, "x")
        G = offsets.numel() - 1
        dev = x.device
        out = torch.empty_like(x)
        self._m.group_normalize(
            x.data_ptr(), x.numel(), offsets.data_ptr(), G, float(eps), bool(unbiased), out.data_ptr(),
            *self._extra(dev),
        )
        return out

    def _csr(self, values: torch.Tensor, offsets: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if values.dim() != 1:
            raise ValueError(f"{what} must be 1-D [T], got shape {list(values.shape)}")
        if offsets.dim() != 1 or offsets.numel() < 1:
            raise ValueError(f"offsets must be 1-D [S + 1] with S >= 0, got shape {list(offsets.shape)}")
        dev = values.device
        values = self._input(values, _F32, tuple(values.shape), what, dev)
        offsets = self._input(offsets, _I64, tuple(offsets.shape), "offsets", dev)
        return values, offsets
