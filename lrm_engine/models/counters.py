"""Compute counters: what a run cost, reported honestly."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# Counters that belong to one problem: a component that knows which tree (problem) of a batch
# each token belongs to splits them per tree (``TreeTally``), so per-problem counts are exact.
# forward_calls per problem = the forward passes in which the problem had at least one row.
# The others (bytes_resident_peak, evictions) are properties of the batch.
PER_TREE = ("tokens_computed", "tokens_reused", "tokens_recomputed", "forward_calls",
            "context_stops", "empty_steps")


class TreeTally:
    """One call's PER_TREE counts split over the B trees of a batch: ``counts[name]`` [B] int64."""

    def __init__(self, batch_size: int):
        self.counts = {name: torch.zeros(batch_size, dtype=torch.int64) for name in PER_TREE}

    def add(self, name: str, trees, amounts) -> None:
        """counts[name][trees[i]] += amounts[i] (trees: ints; amounts: ints or one int for all)."""
        b = torch.as_tensor(trees, dtype=torch.int64).reshape(-1)
        if b.numel() == 0:
            return
        a = torch.as_tensor(amounts, dtype=torch.int64).reshape(-1).expand(b.numel())
        self.counts[name].index_add_(0, b, a)

    def forward(self, trees) -> None:
        """One forward pass in which the given trees (repeats allowed) had rows."""
        b = torch.unique(torch.as_tensor(trees, dtype=torch.int64).reshape(-1))
        self.counts["forward_calls"][b] += 1


@dataclass
class ComputeCounters:
    """Counters of one call, one run, or a merge of many.

    tokens_computed: tokens that went through the model's forward pass (prompts, recomputed
        segments after eviction, and every generated token that was fed back).
    tokens_reused: prefix tokens whose KV came from the store instead of being recomputed; a
        node's prefix counts once per expansion of that node (its k children share it).
    tokens_recomputed: the part of tokens_computed spent re-encoding evicted segments.
    bytes_resident_peak: the largest number of bytes the KV store held (max when merged).
    evictions: segments dropped by the LRU to stay within the budget.
    forward_calls: model forward passes.
    context_stops: steps cut because their path reached the model's context length (terminal).
    empty_steps: steps with no text besides the delimiter (they end their path).
    budget_overruns: times the pinned segments alone (the prefixes one call needs) exceeded the
        KV byte budget, so the store held more than it for that call.
    """

    tokens_computed: int = 0
    tokens_reused: int = 0
    tokens_recomputed: int = 0
    bytes_resident_peak: int = 0
    evictions: int = 0
    forward_calls: int = 0
    context_stops: int = 0
    empty_steps: int = 0
    budget_overruns: int = 0

    _PEAK = ("bytes_resident_peak",)

    def __post_init__(self):
        # This call's PER_TREE counts split by tree, when the component attributes them (a
        # TreeTally; not a field: never merged into running totals).
        self.per_tree: TreeTally | None = None

    def merge(self, other: "ComputeCounters") -> "ComputeCounters":
        """A new counter: sums, except peaks which take the max."""
        out = ComputeCounters()
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(out, f.name, max(a, b) if f.name in self._PEAK else a + b)
        return out

    __add__ = merge

    def add_(self, other: "ComputeCounters") -> "ComputeCounters":
        """Merge ``other`` into self, in place."""
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, max(a, b) if f.name in self._PEAK else a + b)
        return self

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def reuse_ratio(self) -> float:
        """(computed + reused) / computed: how many times fewer tokens than re-encoding everything."""
        total = self.tokens_computed + self.tokens_reused
        return total / self.tokens_computed if self.tokens_computed else float("nan")

    def __str__(self) -> str:
        mib = self.bytes_resident_peak / 2**20
        return (
            f"tokens computed {self.tokens_computed} (recomputed {self.tokens_recomputed}), "
            f"reused {self.tokens_reused}, KV peak {mib:.2f} MiB, evictions {self.evictions}, "
            f"forward calls {self.forward_calls}"
        )
