"""Sampling configuration and the seeded sampler used by the policies."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrm_engine.core.rng import uniform


@dataclass(frozen=True)
class SamplingConfig:
    """How child steps are drawn.

    greedy: argmax (temperature / top_p / top_k ignored) — reproduces ``generate(do_sample=False)``.
    temperature, top_k (0 = off), top_p (1.0 = off): the usual warpers, applied in that order
    (as transformers does). seed: a stream selector mixed into every draw's key
    (lrm_engine/core/rng.py: the key is a hash of the run's seed, the problem id, the path of
    actions to the node and the token position), so that e.g. successive ReST-MCTS* iterations
    or annotation passes draw other samples from the same problems.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    greedy: bool = False

    def __post_init__(self):
        if not self.greedy and self.temperature <= 0:
            raise ValueError("sampling.temperature must be > 0 (or set sampling.greedy=true)")
        if not 0 < self.top_p <= 1:
            raise ValueError("sampling.top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("sampling.top_k must be >= 0")


def warp(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k, top-p on [R, V] float32 logits; filtered entries become -inf."""
    x = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < x.shape[-1]:
        kth = torch.topk(x, cfg.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=False)
        cum = sorted_x.softmax(-1).cumsum(-1)
        remove = cum <= 1 - cfg.top_p
        remove[:, -1] = False  # always keep the most likely token
        x = x.masked_fill(remove.scatter(1, idx, remove), float("-inf"))
    return x


def sample(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None,
           *, keys: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of [R, V] logits -> [R] int64.

    keys: [R] int64 — one counter-based key per row (lrm_engine/core/rng.py); row r's token is
    the inverse CDF of the warped distribution at ``uniform(keys[r])``, so a row's draw depends
    on its key and its logits only, never on the other rows. Without keys: ``torch.multinomial``
    with ``generator``.
    """
    logits = logits.float()
    if cfg.greedy:
        return logits.argmax(-1)
    probs = warp(logits, cfg).softmax(-1)
    if keys is None:
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    cdf = probs.double().cumsum(-1)
    u = uniform(keys.to(torch.int64)) * cdf[:, -1]
    # First index whose cumulative mass exceeds u: a zero-probability token is never chosen.
    x = torch.searchsorted(cdf, u[:, None], right=True).squeeze(1)
    return x.clamp_max(probs.shape[-1] - 1)
