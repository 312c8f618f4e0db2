"""BatchedTree: B search trees of N preallocated node slots with up to A children each.

Struct-of-arrays, one torch tensor per field, in the style of mctx. Node ``ROOT`` (slot 0) of
every tree is its root; slots ``[0, num_nodes[b])`` of tree ``b`` are in use, the rest are free.
Every op in :mod:`lrm_engine.ops` reads and writes these tensors in place; all of them must be
contiguous and on one device.

Values and scores are float32, indices int32 (raw-pointer friendly for the C++, CUDA and Triton
kernels). Slots are never reused within a search; ``reset()`` clears the whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from lrm_engine.core.rng import default_root_keys


class TreeCapacityError(RuntimeError):
    """Raised when an expansion needs more node slots than the tree has."""


@dataclass
class BatchedTree:
    """B trees x N node slots x A actions (children) per node."""

    # Sentinels.
    ROOT = 0  # the root's slot in every tree
    NO_PARENT = -1  # parent of the root and of unused slots
    UNVISITED = -1  # children_index of a child that was not expanded yet
    NO_ACTION = -1  # action_from_parent of the root and of unused slots
    INVALID_PRIOR = -1.0  # children_prior < 0 marks an action that may not be selected

    # parent: [B, N] int32 — slot of the parent node; NO_PARENT for the root and free slots.
    parent: torch.Tensor
    # action_from_parent: [B, N] int32 — which of the parent's A actions leads here; NO_ACTION at the root.
    action_from_parent: torch.Tensor
    # depth: [B, N] int32 — number of edges from the root (root: 0).
    depth: torch.Tensor
    # children_index: [B, N, A] int32 — slot of each child; UNVISITED until expanded.
    children_index: torch.Tensor
    # children_prior: [B, N, A] float32 — prior probability of each action (PUCT); < 0 = invalid.
    children_prior: torch.Tensor
    # visit_count: [B, N] int32 — number of backups that passed through the node.
    visit_count: torch.Tensor
    # value_sum: [B, N] float32 — sum of the (discounted) values backed up through the node.
    value_sum: torch.Tensor
    # step_score: [B, N] float32 — reward-model score of the step that leads to the node; NaN if unscored.
    step_score: torch.Tensor
    # Path aggregates are set in O(1) from the parent's when a node is backed up with a step
    # score; they cover the scored steps since the last unscored node on the path (a search
    # that uses them scores every step, as SearchContext.expand does).
    # path_min: [B, N] float32 — min of step scores from the root to the node (root: +inf).
    path_min: torch.Tensor
    # path_sum: [B, N] float32 — sum of step scores from the root (root: 0); mean = path_sum / path_len.
    path_sum: torch.Tensor
    # path_sum_log: [B, N] float32 — sum of log step scores from the root (root: 0); prod = exp(.).
    path_sum_log: torch.Tensor
    # path_last: [B, N] float32 — score of the last step on the path (root: NaN).
    path_last: torch.Tensor
    # path_len: [B, N] int32 — number of scored steps on the path (root: 0).
    path_len: torch.Tensor
    # terminal: [B, N] bool — the node ends a solution (EOS / final answer); it is never expanded.
    terminal: torch.Tensor
    # token_offset: [B, N] int64 — where the node's step tokens start in the token arena.
    token_offset: torch.Tensor
    # token_length: [B, N] int32 — number of step tokens of the node (root: prompt length or 0).
    token_length: torch.Tensor
    # rng_key: [B, N] int64 — counter-based key of the node's sampling stream (core/rng.py): the
    # root's from (seed, problem id), a child's = child_key(parent's key, action); 0 = not set.
    rng_key: torch.Tensor
    # num_nodes: [B] int32 — slots in use per tree (the next free slot).
    num_nodes: torch.Tensor
    # vvisit: [B, N] int32 — workspace of `select` (virtual visits); all zeros between calls.
    vvisit: torch.Tensor

    # ---------------------------------------------------------------- construction
    @classmethod
    def empty(
        cls,
        batch_size: int,
        num_nodes: int,
        num_actions: int,
        device: torch.device | str = "cpu",
        root_prior: torch.Tensor | None = None,
    ) -> "BatchedTree":
        """A batch of trees holding only their roots.

        root_prior: [B, A] float32 — the root's action priors (default: uniform 1/A).
        """
        if batch_size < 1 or num_nodes < 1 or num_actions < 1:
            raise ValueError(
                f"BatchedTree needs batch_size, num_nodes and num_actions >= 1, got "
                f"{batch_size}, {num_nodes}, {num_actions}"
            )
        B, N, A = batch_size, num_nodes, num_actions
        i32 = dict(dtype=torch.int32, device=device)
        f32 = dict(dtype=torch.float32, device=device)
        tree = cls(
            parent=torch.full((B, N), cls.NO_PARENT, **i32),
            action_from_parent=torch.full((B, N), cls.NO_ACTION, **i32),
            depth=torch.zeros((B, N), **i32),
            children_index=torch.full((B, N, A), cls.UNVISITED, **i32),
            children_prior=torch.zeros((B, N, A), **f32),
            visit_count=torch.zeros((B, N), **i32),
            value_sum=torch.zeros((B, N), **f32),
            step_score=torch.full((B, N), math.nan, **f32),
            path_min=torch.full((B, N), math.inf, **f32),
            path_sum=torch.zeros((B, N), **f32),
            path_sum_log=torch.zeros((B, N), **f32),
            path_last=torch.full((B, N), math.nan, **f32),
            path_len=torch.zeros((B, N), **i32),
            terminal=torch.zeros((B, N), dtype=torch.bool, device=device),
            token_offset=torch.zeros((B, N), dtype=torch.int64, device=device),
            token_length=torch.zeros((B, N), **i32),
            rng_key=torch.zeros((B, N), dtype=torch.int64, device=device),
            num_nodes=torch.ones((B,), **i32),
            vvisit=torch.zeros((B, N), **i32),
        )
        tree.rng_key[:, cls.ROOT] = default_root_keys(B).to(device)
        if root_prior is None:
            tree.children_prior[:, cls.ROOT, :] = 1.0 / A
        else:
            tree.set_root_prior(root_prior)
        return tree

    def set_root_prior(self, prior: torch.Tensor) -> None:
        """Set the roots' action priors. prior: [B, A] float32 (< 0 marks an invalid action)."""
        if tuple(prior.shape) != (self.batch_size, self.num_actions):
            raise ValueError(
                f"root prior must have shape [B, A] = {[self.batch_size, self.num_actions]}, "
                f"got {list(prior.shape)}"
            )
        self.children_prior[:, self.ROOT, :] = prior.to(self.children_prior)

    # ---------------------------------------------------------------- shape
    @property
    def batch_size(self) -> int:
        return self.parent.shape[0]

    @property
    def capacity(self) -> int:
        """N, the node slots per tree."""
        return self.parent.shape[1]

    @property
    def num_actions(self) -> int:
        return self.children_index.shape[2]

    @property
    def device(self) -> torch.device:
        return self.parent.device

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every field by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # ---------------------------------------------------------------- derived values
    def node_value(self) -> torch.Tensor:
        """[B, N] float32 running mean value_sum / visit_count (0 where unvisited)."""
        visits = self.visit_count.to(torch.float32)
        return torch.where(visits > 0, self.value_sum / visits.clamp_min(1), torch.zeros_like(visits))

    def children_visits(self) -> torch.Tensor:
        """[B, N, A] int32 visit count of each child (0 where not expanded)."""
        idx = self.children_index.long().clamp_min(0)
        v = torch.gather(self.visit_count, 1, idx.flatten(1)).view_as(idx)
        return torch.where(self.children_index >= 0, v, torch.zeros_like(v))

    def path_to_root(self, b: int, node: int) -> list[int]:
        """Slots from ``node`` up to the root of tree ``b`` (node first). For tests and export."""
        path = []
        parent = self.parent[b].tolist()
        while node != self.NO_PARENT:
            path.append(node)
            node = parent[node]
        return path

    # ---------------------------------------------------------------- capacity
    def ensure_capacity(self, extra: int, grow: bool = False, knob: str = "search.max_nodes") -> None:
        """Make sure every tree has ``extra`` free slots; grow (double) or raise naming the knob."""
        need = int(self.num_nodes.max()) + extra
        if need <= self.capacity:
            return
        if not grow:
            raise TreeCapacityError(
                f"the search tree ran out of node slots: {need} needed, {self.capacity} allocated "
                f"per tree. Raise `{knob}` (or set `search.grow_nodes=true` to grow on demand)."
            )
        new_n = self.capacity
        while new_n < need:
            new_n *= 2
        self.grow(new_n)

    def grow(self, new_capacity: int) -> None:
        """Reallocate every [B, N, ...] field to ``new_capacity`` slots, keeping the contents."""
        if new_capacity <= self.capacity:
            return
        fresh = BatchedTree.empty(self.batch_size, new_capacity, self.num_actions, self.device)
        n = self.capacity
        for name, t in self.tensors().items():
            if name == "num_nodes":
                continue
            getattr(fresh, name)[:, :n] = t
            setattr(self, name, getattr(fresh, name))
        # Fresh slots carry the defaults of an empty tree (children UNVISITED, scores NaN, ...).

    def reset(self, root_prior: torch.Tensor | None = None) -> None:
        """Clear every tree back to a lone root, in place (keeps the allocation)."""
        fresh = BatchedTree.empty(
            self.batch_size, self.capacity, self.num_actions, self.device, root_prior
        )
        for name, t in fresh.tensors().items():
            getattr(self, name).copy_(t)
