"""Several optimisation passes over each rollout batch, with the rollout's old log-probs.

    source = ReplaySource(rollouts, objective, model, passes=2, grad_accum=1, precision="fp32")

TRL's semantics (``GRPOConfig.num_iterations``, ``PPOConfig.num_ppo_epochs``): every rollout
batch is optimised on ``passes`` times. The loop draws ``grad_accum`` micro-batches per
optimiser step, so the rollout source is asked for ``grad_accum`` fresh batches, and the next
``passes - 1`` steps replay those same micro-batches in the same order; ``passes`` optimiser
steps per generation. When a batch is generated, ``objective.rollout_stats(model, batch)`` adds
what the clipped objectives compare against, computed once with no gradient by the weights that
sampled it: ``old_logps`` (the ratio is ``exp(logp - old_logp)``), ``old_values`` (PPO's value
clipping) and ``ref_logps`` (the frozen reference's, so it runs once). In the first pass the
ratio is therefore exactly 1; from the second on the weights have moved, and ``epsilon`` /
``epsilon_high`` / ``cliprange`` / ``cliprange_value`` act (the objectives report the clipped
shares). With ``passes = 1`` no wrapper is used: the objectives take the current log-probs,
detached, as the old ones (TRL's ``num_iterations=1`` case), one forward pass less.

Resume. The wrapper's state is the number of micro-batches it has handed out, the rollout
source's own state and, between the passes of one generation, the buffered micro-batches
themselves (tensors as exact JSON lists: float32 round-trips through a Python float), so a
resumed run replays the batches, old log-probs included, that the interrupted run would have.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Mapping

import torch


def _pack(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        return {"__tensor__": t.reshape(-1).tolist(), "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape)}
    if isinstance(x, Mapping):
        return {k: _pack(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_pack(v) for v in x]
    return x


def _unpack(x: Any) -> Any:
    if isinstance(x, Mapping):
        if "__tensor__" in x:
            return torch.tensor(x["__tensor__"], dtype=getattr(torch, x["dtype"])).reshape(x["shape"])
        return {k: _unpack(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unpack(v) for v in x]
    return x


class ReplaySource:
    """Wraps a rollout source: ``passes`` optimiser steps per generation (module docstring)."""

    def __init__(self, source, objective, model, *, passes: int, grad_accum: int = 1,
                 precision: str = "fp32"):
        if passes < 1 or grad_accum < 1:
            raise ValueError(f"passes and grad_accum must be >= 1, got {passes}, {grad_accum}")
        if not callable(getattr(objective, "rollout_stats", None)):
            raise ValueError(f"objective {getattr(objective, 'name', objective)!r} cannot replay "
                             "rollouts (it has no rollout_stats)")
        self.source, self.objective, self.model = source, objective, model
        self.passes, self.grad_accum, self.precision = int(passes), int(grad_accum), precision
        self.calls = 0
        self.buffer: list[tuple[dict, list]] = []

    def _stamp(self, batch: dict) -> dict:
        """The batch plus the objective's rollout-time statistics (no grad, current weights)."""
        from .trainer import to_device

        dev = next(self.model.parameters()).device
        amp = (torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
               if self.precision == "bf16" else nullcontext())
        with torch.no_grad(), amp:
            stats = self.objective.rollout_stats(self.model, to_device(batch, dev))
        return dict(batch) | {k: v.detach().float().cpu() for k, v in stats.items()}

    def next_batch(self):
        j = self.calls % (self.grad_accum * self.passes)
        if j == 0:
            self.buffer = []
        if j < self.grad_accum:
            batch, idx = self.source.next_batch()
            self.buffer.append((self._stamp(batch), list(idx)))
        batch, idx = self.buffer[j % self.grad_accum]
        self.calls += 1
        # Logged next to the objective's metrics: which pass of its generation a step made.
        batch = dict(batch) | {"log": dict(batch.get("log") or {}) | {"rollout_pass": float(j // self.grad_accum)}}
        return batch, list(idx)

    @property
    def epoch(self) -> float:
        return float(getattr(self.source, "epoch", 0.0))

    def state_dict(self) -> dict:
        mid = self.calls % (self.grad_accum * self.passes) != 0
        return {"replay": {"calls": self.calls, "passes": self.passes, "grad_accum": self.grad_accum,
                           "buffer": _pack(self.buffer) if mid else []},
                "source": self.source.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        rep = state.get("replay")
        if rep is None:
            raise ValueError("cannot resume: the checkpoint's run made one pass per rollout batch, "
                             f"this one {self.passes} (use a new run folder)")
        for k in ("passes", "grad_accum"):
            if rep[k] != getattr(self, k):
                raise ValueError(f"cannot resume: rollout passes changed ({k}: checkpoint "
                                 f"{rep[k]!r}, now {getattr(self, k)!r})")
        self.source.load_state_dict(state["source"])
        self.calls = int(rep["calls"])
        self.buffer = [(b, list(i)) for b, i in _unpack(rep["buffer"])]
