"""``vineppo``: VinePPO (Kazemnejad et al. 2024) — PPO without a critic; the value of every
intermediate reasoning state is a Monte-Carlo estimate.

Values. A trajectory is a prompt and its reasoning steps ``a_0 .. a_{n-1}``; ``s_t`` is the
state before step ``t`` (the prompt plus steps ``a_0 .. a_{t-1}``; ``s_0`` the prompt alone).
``V(s_t)`` is the mean reward of ``K`` independent completions sampled by the current policy
from ``s_t`` (drawn by :class:`lrm_engine.train.vine.VineRolloutSource` through the tree engine:
states with the same token prefix are estimated once, and the K completions of a state share
its prefix). ``V(s_n) := r``, the trajectory's own reward.

Advantages. Step advantage ``A_t = V(s_{t+1}) - V(s_t)`` (γ = 1, no discount); the final step's
is therefore ``A_{n-1} = r - V(s_{n-1})``. Every token of step ``t`` gets ``A_t``
(:func:`step_advantages`, :func:`token_advantages`). No whitening, no critic.

Loss (ρ = exp(logp - old_logp), ε = ``epsilon``; ⟨·⟩ the token mean over the micro-batch's
completion tokens; micro-batches weighted by their token counts, so a step is the token mean
over the whole step):

    loss = ⟨ max(-A ρ, -A clip(ρ, 1 - ε, 1 + ε)) ⟩ + β ⟨ k3 ⟩,
    k3 = exp(ref - logp) - (ref - logp) - 1          (β = ``beta``; 0: no reference)

PPO epochs (``num_ppo_epochs``): each batch of trajectories and MC advantages is optimised on
that many times (:class:`lrm_engine.train.rl_replay.ReplaySource`, the values estimated once);
:meth:`VinePPOObjective.rollout_stats` records ``old_logps`` (and ``ref_logps``) at rollout
time, with no gradient, so from the second epoch on the clip acts. One epoch: the current
log-probs, detached.

Batch: ``input_ids``, ``attention_mask``, ``completion_mask [N, T]`` (per-token arrays follow
:mod:`lrm_engine.objectives.logprobs`), ``advantages [N, T]`` (token advantages, 0 outside the
completion), optionally ``old_logps``/``ref_logps``, ``rewards [N]`` (for logging). A micro-batch
without completion tokens gives loss 0 with a zero gradient.

Metrics: ``loss``, ``pg_loss``, ``kl``, ``clip_frac``, ``advantage`` (token mean), ``abs_advantage``,
``reward``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import ObjectiveBase
from .grpo import k3_kl
from .logprobs import ReferenceMixin, token_logps


def step_advantages(values: Sequence[float], reward: float) -> list[float]:
    """``[A_0 .. A_{n-1}]`` from ``values = [V(s_0) .. V(s_{n-1})]`` and the final reward:
    ``A_t = V(s_{t+1}) - V(s_t)`` with ``V(s_n) = reward``."""
    v = [float(x) for x in values] + [float(reward)]
    return [v[t + 1] - v[t] for t in range(len(values))]


def token_advantages(step_lengths: Sequence[Sequence[int]], step_adv: Sequence[Sequence[float]],
                     completion_start: Sequence[int], T: int) -> torch.Tensor:
    """``[N, T]`` float32: row ``i``'s completion starts at ``completion_start[i]``; its steps have
    ``step_lengths[i]`` tokens each, in order; every token of step ``t`` gets ``step_adv[i][t]``;
    0 elsewhere."""
    out = torch.zeros(len(step_lengths), T, dtype=torch.float32)
    for i, (lens, adv) in enumerate(zip(step_lengths, step_adv)):
        if len(lens) != len(adv):
            raise ValueError(f"vineppo: row {i} has {len(lens)} steps and {len(adv)} advantages")
        o = int(completion_start[i])
        for n, a in zip(lens, adv):
            out[i, o:o + int(n)] = float(a)
            o += int(n)
        if o > T:
            raise ValueError(f"vineppo: row {i} runs past T={T}")
    return out


def vineppo_loss(logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *,
                 old_logps: torch.Tensor | None = None, ref_logps: torch.Tensor | None = None,
                 epsilon: float = 0.2, beta: float = 0.0):
    """``(loss, metrics)`` of the clipped token-level PPO loss (module docstring)."""
    m = mask.bool()
    mf = m.to(logps.dtype)
    zero = torch.zeros_like(logps)
    lp = torch.where(m, logps, zero)
    old = lp.detach() if old_logps is None else torch.where(m, old_logps.to(logps.dtype), zero)
    A = torch.where(m, advantages.to(logps.dtype), zero)
    n = mf.sum().clamp_min(1.0)
    ratio = torch.exp(lp - old)
    pg1 = -A * ratio
    pg2 = -A * torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon)
    pg = torch.where(m, torch.maximum(pg1, pg2), zero).sum() / n
    loss = pg
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("vineppo: beta != 0 needs ref_logps")
        kl = torch.where(m, k3_kl(lp, torch.where(m, ref_logps.to(logps.dtype), zero)), zero)
        loss = loss + beta * kl.sum() / n
    with torch.no_grad():
        den = float(n)
        metrics = {"loss": float(loss.detach()), "pg_loss": float(pg.detach()),
                   "kl": float(kl.sum()) / den if kl is not None else 0.0,
                   "clip_frac": float(((pg2 > pg1) & m).sum()) / den,
                   "advantage": float(A.sum()) / den, "abs_advantage": float(A.abs().sum()) / den}
    return loss, metrics


class VinePPOObjective(ReferenceMixin, ObjectiveBase):
    """Clipped PPO on Monte-Carlo step advantages (module docstring)."""

    name = "vineppo"
    # What batches this objective consumes: trajectories with MC values (lrm_engine.train.vine).
    batch_kind = "vine_rollout"

    def __init__(self, epsilon: float = 0.2, beta: float = 0.0, ref_model: str | None = None,
                 num_ppo_epochs: int = 1):
        if int(num_ppo_epochs) < 1:
            raise ValueError(f"vineppo: num_ppo_epochs must be >= 1, got {num_ppo_epochs}")
        self.num_ppo_epochs = int(num_ppo_epochs)
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"vineppo: epsilon must be in (0, 1), got {epsilon}")
        if beta < 0:
            raise ValueError(f"vineppo: beta must be >= 0, got {beta}")
        self.epsilon, self.beta = float(epsilon), float(beta)
        self.ref_model_path = ref_model or None
        self.ref_model = None

    def setup(self, model, device) -> None:
        if self.beta != 0.0:
            self.setup_reference(model, device)

    @property
    def rollout_passes(self) -> int:
        """Optimisation passes over each rollout batch (num_ppo_epochs)."""
        return self.num_ppo_epochs

    def rollout_stats(self, model, batch) -> dict:
        """At rollout time, no grad: the sampling weights' ``old_logps`` (and ``ref_logps``)."""
        return self.rollout_logps(model, batch, reference=self.beta != 0.0)

    def loss(self, model, batch):
        ids, am, cm = batch["input_ids"], batch.get("attention_mask"), batch["completion_mask"]
        logps = token_logps(model, ids, am)
        ref = None
        if self.beta != 0.0:
            ref = batch.get("ref_logps")
            if ref is None:
                ref = self.reference_token_logps(model, ids, am)
        loss, metrics = vineppo_loss(logps, cm, batch["advantages"], old_logps=batch.get("old_logps"),
                                     ref_logps=ref, epsilon=self.epsilon, beta=self.beta)
        if batch.get("rewards") is not None:
            metrics["reward"] = float(batch["rewards"].float().mean())
        return loss, metrics

    def loss_weight(self, batch) -> float:
        return float(max(1, int(batch["completion_mask"].sum())))

    def state_dict(self) -> dict:
        return {"beta": self.beta}


def make_vineppo_objective(**kwargs) -> VinePPOObjective:
    """Registry factory for ``objective=vineppo`` (keywords: see :class:`VinePPOObjective`)."""
    kwargs.pop("name", None)
    return VinePPOObjective(**kwargs)
