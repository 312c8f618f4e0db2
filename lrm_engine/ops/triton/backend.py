"""TritonBackend: the six tree ops on Triton kernels (GPU, or CPU under ``TRITON_INTERPRET=1``).

Same signatures and semantics as lrm_engine/ops/reference.py (see lrm_engine/ops/dispatch.py).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

from lrm_engine.core.tree import BatchedTree, TreeCapacityError
from lrm_engine.ops.triton import kernels as K_

import triton

SEGMENT_OPS = ("min", "max", "sum", "mean", "last", "prod")
SELECT_RULES = ("puct", "uct")

# Whether the kernels were defined under the interpreter (fixed when kernels.py was imported).
INTERPRETED = type(K_.select_kernel).__name__ == "InterpretedFunction"

_TREE_FIELDS = (
    "parent", "action_from_parent", "depth", "children_index", "children_prior", "visit_count",
    "value_sum", "step_score", "path_min", "path_sum", "path_sum_log", "path_last", "path_len",
    "terminal", "num_nodes", "vvisit",
)


def _why_unavailable() -> str | None:
    if INTERPRETED or torch.cuda.is_available():
        return None
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return (
            "the triton backend's kernels were defined before TRITON_INTERPRET=1 was set; set it "
            "before lrm_engine.ops.triton is first imported (Triton reads it when a kernel is "
            "defined)"
        )
    return (
        "the triton backend needs a CUDA GPU (none is visible to torch), or TRITON_INTERPRET=1 "
        "set before lrm_engine.ops.triton is imported to run its kernels on the CPU through "
        "Triton's interpreter (slow; meant for tests)"
    )


def _on(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _block(n: int, lo: int = 16, hi: int = 1024) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


class TritonBackend:
    """Triton kernels for select / expand / backup / topk_per_tree / segment_reduce / group_normalize."""

    name = "triton"

    def __init__(self) -> None:
        why = _why_unavailable()
        if why is not None:
            raise RuntimeError(why)
        self._params: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_device(device: torch.device, what: str) -> None:
        if device.type == "cpu" and not INTERPRETED:
            raise RuntimeError(
                f"the triton backend cannot run on CPU tensors ({what} is on the CPU) unless "
                "TRITON_INTERPRET=1 was set before lrm_engine.ops.triton was imported; move the "
                "data to a CUDA device or use kernels=cpp|reference on the CPU"
            )
        if device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"the triton backend runs on CUDA (or CPU under the interpreter), not {device}")

    def _check_tree(self, tree: BatchedTree) -> None:
        dev = tree.device
        self._check_device(dev, "the tree")
        for name in _TREE_FIELDS:
            t = getattr(tree, name)
            if t.device != dev:
                raise ValueError(f"tree.{name} is on {t.device}, the tree on {dev}")
            if not t.is_contiguous():
                raise ValueError(f"tree.{name} must be contiguous (the kernels use raw offsets)")

    @staticmethod
    def _arg(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).contiguous()

    def _select_params(self, device, c1, c2, uct_c, vl) -> torch.Tensor:
        key = (str(device), float(c1), float(c2), float(uct_c), float(vl))
        p = self._params.get(key)
        if p is None:
            if len(self._params) > 64:
                self._params.clear()
            p = torch.tensor([c1, c2, uct_c, vl, 1e-8], dtype=torch.float64, device=device)
            self._params[key] = p
        return p

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K leaves per tree. Returns (leaf_node [B, K] int32, leaf_action [B, K] int32)."""
        if rule not in SELECT_RULES:
            raise ValueError(f"unknown selection rule {rule!r}; known: {', '.join(SELECT_RULES)}")
        self._check_tree(tree)
        B, N, A, K = tree.batch_size, tree.capacity, tree.num_actions, int(num_leaves)
        dev = tree.device
        out_node = torch.full((B, K), BatchedTree.NO_PARENT, dtype=torch.int32, device=dev)
        out_action = torch.full((B, K), BatchedTree.NO_ACTION, dtype=torch.int32, device=dev)
        if K <= 0:
            return out_node, out_action
        params = self._select_params(dev, c1, c2, uct_c, virtual_loss)
        with _on(dev):
            K_.select_kernel[(B,)](
                tree.children_index, tree.children_prior, tree.visit_count, tree.value_sum,
                tree.terminal.view(torch.uint8), tree.parent, tree.vvisit, out_node, out_action,
                params, N, A, K,
                IS_UCT=(rule == "uct"), BLOCK_A=_block(A, lo=2), BLOCK_J=_block(K, lo=16, hi=64),
                num_warps=1,
            )
        return out_node, out_action

    def expand(
        self,
        tree: BatchedTree,
        leaf_node: torch.Tensor,
        leaf_action: torch.Tensor,
        child_prior: torch.Tensor,
        terminal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Create the children (leaf_node, leaf_action); returns new_node [B, K] int32 (-1 = none)."""
        self._check_tree(tree)
        dev = tree.device
        B, K = leaf_node.shape
        A, N = tree.num_actions, tree.capacity
        out = torch.full((B, K), BatchedTree.NO_PARENT, dtype=torch.int32, device=dev)
        if K == 0:
            return out
        ln = self._arg(leaf_node, torch.int32, dev)
        la = self._arg(leaf_action, torch.int32, dev)
        cp = self._arg(child_prior, torch.float32, dev)
        if tuple(cp.shape) != (B, K, A):
            raise ValueError(f"child_prior must have shape [B, K, A] = {[B, K, A]}, got {list(cp.shape)}")
        overflow = torch.zeros(1, dtype=torch.int32, device=dev)
        if terminal is not None:
            term = self._arg(terminal, torch.bool, dev).view(torch.uint8)
        else:
            term = ln  # placeholder, never read
        with _on(dev):
            K_.expand_kernel[(B,)](
                tree.parent, tree.action_from_parent, tree.depth, tree.children_index,
                tree.children_prior, tree.visit_count, tree.value_sum, tree.terminal.view(torch.uint8),
                tree.num_nodes, ln, la, cp, term, out, overflow, N, A, K,
                HAS_TERMINAL=terminal is not None, BLOCK_A=_block(A, lo=2), num_warps=1,
            )
        # The kernel never writes past the N slots; a child that did not fit is reported here
        # (one device sync). The trees keep the children that fitted, as the reference would
        # have up to its IndexError.
        if int(overflow.item()):
            raise TreeCapacityError(
                f"the search tree ran out of node slots ({N} allocated per tree) while expanding "
                f"K={K} leaves. Call tree.ensure_capacity(K) before expand (lrm_engine.ops.expand "
                "does) or raise `search.max_nodes`."
            )
        return out

    def backup(
        self,
        tree: BatchedTree,
        nodes: torch.Tensor,
        values: torch.Tensor,
        step_scores: torch.Tensor | None = None,
        discount: float = 1.0,
    ) -> None:
        """Back values up from nodes [B, K] to the roots; set step scores and path aggregates."""
        self._check_tree(tree)
        dev = tree.device
        B, K = nodes.shape
        if K == 0:
            return None
        nd = self._arg(nodes, torch.int32, dev)
        vals = self._arg(values, torch.float32, dev)
        sc = self._arg(step_scores, torch.float32, dev) if step_scores is not None else vals
        with _on(dev):
            K_.backup_kernel[(B,)](
                tree.parent, tree.visit_count, tree.value_sum, tree.step_score, tree.path_min,
                tree.path_sum, tree.path_sum_log, tree.path_last, tree.path_len,
                nd, vals, sc, float(discount), tree.capacity, K,
                HAS_SCORES=step_scores is not None, num_warps=1,
            )
        return None

    # ------------------------------------------------------------------ flat ops
    def topk_per_tree(
        self, scores: torch.Tensor, k: int, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best k per row of scores [B, M]: (values [B, k] float32, index [B, k] int32)."""
        dev = scores.device
        self._check_device(dev, "scores")
        B, M = scores.shape
        k = int(k)
        out_v = torch.full((B, k), -math.inf, dtype=torch.float32, device=dev)
        out_i = torch.full((B, k), -1, dtype=torch.int32, device=dev)
        if B == 0 or k == 0:
            return out_v, out_i
        sc = self._arg(scores, torch.float32, dev)
        vd = self._arg(valid, torch.bool, dev).view(torch.uint8) if valid is not None else sc
        with _on(dev):
            K_.topk_kernel[(B,)](
                sc, vd, out_v, out_i, M, k,
                HAS_VALID=valid is not None, BLOCK=_block(M, lo=16, hi=4096),
                num_warps=4,
            )
        return out_v, out_i

    def segment_reduce(self, values: torch.Tensor, offsets: torch.Tensor, op: str) -> torch.Tensor:
        """Reduce each CSR segment of values [T]; offsets [S + 1] int64. Returns [S] float32."""
        if op not in SEGMENT_OPS:
            raise ValueError(f"unknown segment op {op!r}; known: {', '.join(SEGMENT_OPS)}")
        dev = values.device
        self._check_device(dev, "values")
        v = self._arg(values, torch.float32, dev)
        off = self._arg(offsets, torch.int64, dev)
        S = off.numel() - 1
        out = torch.empty((max(S, 0),), dtype=torch.float32, device=dev)
        if S <= 0:
            return out
        with _on(dev):
            K_.segment_reduce_kernel[(S,)](
                v, off, out, OP=K_.SEG_CODES[op], BLOCK=_block(v.numel() // S), num_warps=4,
            )
        return out

    def group_normalize(
        self, x: torch.Tensor, offsets: torch.Tensor, eps: float = 1e-4, unbiased: bool = True
    ) -> torch.Tensor:
        """(x - mean_g) / (std_g + eps) per CSR group of x [T]; offsets [G + 1] int64."""
        dev = x.device
        self._check_device(dev, "x")
        xf = self._arg(x, torch.float32, dev)
        off = self._arg(offsets, torch.int64, dev)
        out = xf.clone()
        G = off.numel() - 1
        if G <= 0:
            return out
        with _on(dev):
            K_.group_normalize_kernel[(G,)](
                xf, off, out, float(eps), UNBIASED=bool(unbiased), BLOCK=_block(xf.numel() // G),
                num_warps=4,
            )
        return out
