"""Per-node KV segments in a store bounded by a byte budget, with LRU eviction and pinning.

A segment holds, for every layer, the keys and values of just one node's step tokens
(``[kv_heads, T, head_dim]`` each, the model's dtype), plus the next-token logits after the
node's last token (``[V]`` float32) so its children can be sampled without re-running it. The
prefix of a node is the concatenation of its ancestors' segments, root first.

Eviction: after every insertion and every ``unpin``, least-recently-used *unpinned* segments are
dropped until the store fits ``budget_bytes``. Pinned segments (those the current batch needs)
are never evicted; if the pinned set alone exceeds the budget the store runs over it for the
duration of the call (``bytes_resident_peak`` records that honestly). An evicted segment is
recomputed by the policy when a descendant needs it (see ``HFPolicy._ensure_prefixes``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

import torch

from lrm_engine.models.counters import ComputeCounters


@dataclass
class KVSegment:
    """The KV of one node's tokens, every layer, plus the logits after its last token."""

    keys: list[torch.Tensor]  # per layer [kv_heads, T, head_dim]
    values: list[torch.Tensor]  # per layer [kv_heads, T, head_dim]
    next_logits: torch.Tensor | None = None  # [V] float32 (None: not needed, e.g. terminal)

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[-2]) if self.keys else 0

    @property
    def nbytes(self) -> int:
        n = sum(t.nbytes for t in self.keys) + sum(t.nbytes for t in self.values)
        return n + (self.next_logits.nbytes if self.next_logits is not None else 0)


class KVStore:
    """Byte-bounded LRU map key -> KVSegment with pin counts."""

    def __init__(self, budget_bytes: int, counters: ComputeCounters | None = None):
        if budget_bytes < 0:
            raise ValueError("the KV budget must be >= 0 bytes")
        self.budget_bytes = int(budget_bytes)
        self.counters = counters if counters is not None else ComputeCounters()
        self._segs: OrderedDict[Hashable, KVSegment] = OrderedDict()
        self._pins: dict[Hashable, int] = {}
        self.bytes_resident = 0

    @classmethod
    def from_mb(cls, kv_budget_mb: float, counters: ComputeCounters | None = None) -> "KVStore":
        return cls(int(kv_budget_mb * 2**20), counters)

    # ------------------------------------------------------------ access
    def __contains__(self, key: Hashable) -> bool:
        return key in self._segs

    def __len__(self) -> int:
        return len(self._segs)

    def get(self, key: Hashable) -> KVSegment | None:
        """The segment (marked most recently used), or None if absent / evicted."""
        seg = self._segs.get(key)
        if seg is not None:
            self._segs.move_to_end(key)
        return seg

    def put(self, key: Hashable, seg: KVSegment, pin: bool = False) -> None:
        """Insert (or replace) a segment as most recently used, then enforce the budget."""
        old = self._segs.pop(key, None)
        if old is not None:
            self.bytes_resident -= old.nbytes
        self._segs[key] = seg
        self.bytes_resident += seg.nbytes
        if pin:
            self.pin([key])
        self._note_peak()
        self.enforce_budget()

    def discard(self, key: Hashable) -> None:
        """Drop a segment (not counted as an eviction)."""
        seg = self._segs.pop(key, None)
        if seg is not None:
            self.bytes_resident -= seg.nbytes
        self._pins.pop(key, None)

    def discard_where(self, pred) -> None:
        for key in [k for k in self._segs if pred(k)]:
            self.discard(key)

    # ------------------------------------------------------------ pinning
    def pin(self, keys: Iterable[Hashable]) -> None:
        for k in keys:
            self._pins[k] = self._pins.get(k, 0) + 1

    def unpin(self, keys: Iterable[Hashable]) -> None:
        for k in keys:
            c = self._pins.get(k, 0) - 1
            if c <= 0:
                self._pins.pop(k, None)
            else:
                self._pins[k] = c
        self.enforce_budget()

    def pin_resident_prefix(self, keys: Sequence[Hashable], pinned: list) -> int:
        """Pin the longest leading run of ``keys`` that is resident (appending them to
        ``pinned``); returns its length (the path's segments from there on must be encoded)."""
        n = 0
        for key in keys:
            if key not in self:
                break
            n += 1
        self.pin(keys[:n])
        pinned.extend(keys[:n])
        return n

    def is_pinned(self, key: Hashable) -> bool:
        return key in self._pins

    # ------------------------------------------------------------ budget
    def enforce_budget(self) -> None:
        if self.bytes_resident <= self.budget_bytes:
            return
        for key in list(self._segs):  # least recently used first
            if self.bytes_resident <= self.budget_bytes:
                break
            if key in self._pins:
                continue
            seg = self._segs.pop(key)
            self.bytes_resident -= seg.nbytes
            self.counters.evictions += 1
        if self.bytes_resident > self.budget_bytes:  # what is left is pinned (in use this call)
            self.counters.budget_overruns += 1

    def _note_peak(self) -> None:
        if self.bytes_resident > self.counters.bytes_resident_peak:
            self.counters.bytes_resident_peak = self.bytes_resident
