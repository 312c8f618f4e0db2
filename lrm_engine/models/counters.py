"""Compute counters: what a run cost, reported honestly."""

from __future__ import annotations

from dataclasses import dataclass, fields


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
    """

    tokens_computed: int = 0
    tokens_reused: int = 0
    tokens_recomputed: int = 0
    bytes_resident_peak: int = 0
    evictions: int = 0
    forward_calls: int = 0

    _PEAK = ("bytes_resident_peak",)

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
