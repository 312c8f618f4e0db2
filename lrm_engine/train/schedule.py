"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

``lr(s)`` for the optimizer step with 0-based index ``s`` (the loop's step ``n`` uses ``s = n-1``):

- ``s < warmup``: ``peak * (s + 1) / warmup``;
- after: ``floor + (peak - floor) * 0.5 * (1 + cos(pi * p))`` with
  ``p = (s - warmup) / max(1, total - warmup)`` clipped to [0, 1] and ``floor = peak * min_lr_ratio``.

The schedule is a pure function of the step, so it needs no state of its own to resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineWithWarmup:
    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self):
        if self.total_steps <= 0:
            raise ValueError("total_steps must be positive")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("min_lr_ratio must be in [0, 1]")

    def lr_at(self, s: int) -> float:
        if s < self.warmup_steps:
            return self.peak_lr * (s + 1) / self.warmup_steps
        floor = self.peak_lr * self.min_lr_ratio
        p = (s - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        p = min(1.0, max(0.0, p))
        return floor + (self.peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
