"""``ppo``: PPO with a value head, GAE and an optional KL penalty to a reference (Schulman et al.
2017; the RLHF form of Ziegler et al. 2019 / TRL's PPOTrainer). With the verifier as the reward
this is ReFT (Luong et al. 2024).

Batch (a rollout batch, e.g. from :mod:`lrm_engine.train.rl`): ``input_ids [N, T]``,
``attention_mask [N, T]``, ``completion_mask [N, T]`` (per-token arrays follow
:mod:`lrm_engine.objectives.logprobs`), ``rewards [N]`` (the sequence score, e.g. 1 for a
verified answer); optionally ``old_logps [N, T]`` and ``old_values [N, T]`` (from the rollout
policy and value head, for several PPO epochs per rollout; absent: the current ones, detached —
the on-policy first update), ``ref_logps [N, T]``.

PPO epochs (``num_ppo_epochs``, TRL's PPOConfig): each rollout batch is optimised on that many
times (:class:`lrm_engine.train.rl_replay.ReplaySource`); :meth:`PPOObjective.rollout_stats`
records ``old_logps``, ``old_values`` (and ``ref_logps``) once at rollout time, with no gradient,
so the advantages and value targets stay those of the rollout and, from the second epoch on,
``cliprange`` and ``cliprange_value`` act. One epoch: the current ones, detached.

Value head: ``value_head = Linear(hidden_size, 1)`` on the policy's last hidden states (after the
final norm), trained next to the model (:meth:`trainable_modules`; checkpointed and restored on
resume). The value of the state before completion token ``t`` is read at position ``t - 1``:
``V[:, t] = value_head(h[:, t - 1])``.

Rewards per completion token (``kl_coef`` = c; the KL penalty only when c > 0, k1 estimator as
in TRL's PPO):

    r_t = -c · (old_logp_t - ref_logp_t)  +  [t is the last completion token] · reward

GAE over each sequence's completion tokens t_1 < ... < t_n (γ = ``gamma``, λ = ``lam``, and
V(after the last token) = 0):

    δ_k = r_{t_k} + γ V_old(t_{k+1}) - V_old(t_k),     A_k = δ_k + γ λ A_{k+1},     A_{n+1} = 0
    R_k = A_k + V_old(t_k)                              (the value targets)

With ``whiten_advantages`` the advantages are shifted and scaled to mean 0, std 1 over the
micro-batch's completion tokens (population std, + 1e-8), as TRL does.

Loss (ε = ``cliprange``, ε_v = ``cliprange_value``, ρ = exp(logp - old_logp); token means over
the micro-batch's completion tokens, ``⟨·⟩``):

    pg_loss = ⟨ max(-A ρ, -A clip(ρ, 1 - ε, 1 + ε)) ⟩
    V_clip  = V_old + clip(V - V_old, -ε_v, ε_v)
    vf_loss = ½ ⟨ max((V - R)², (V_clip - R)²) ⟩
    loss    = pg_loss + vf_coef · vf_loss

A micro-batch with no completion token gives loss 0 with a zero gradient (never NaN); a fully
masked row adds nothing. Micro-batches are weighted by their completion tokens
(:meth:`loss_weight`), so an accumulated step is the token mean over the step.

Metrics: ``loss``, ``pg_loss``, ``vf_loss``, ``clip_frac``, ``value_clip_frac``, ``kl``
(token mean of old_logp - ref_logp), ``reward``, ``advantage`` (mean before whitening),
``value`` (mean V), ``returns`` (mean R).
"""

from __future__ import annotations

import torch

from .base import ObjectiveBase
from .logprobs import ReferenceMixin, token_logps


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages, returns)`` ``[N, T]`` by GAE over the masked positions of each row (see the
    module docstring); zero outside the mask. Inputs are not differentiated through."""
    r, v, m = token_rewards.detach(), values.detach(), mask.bool()
    N, T = r.shape
    adv = torch.zeros_like(r)
    last = torch.zeros(N, dtype=r.dtype, device=r.device)
    next_v = torch.zeros(N, dtype=r.dtype, device=r.device)
    for t in range(T - 1, -1, -1):
        mt = m[:, t]
        delta = r[:, t] + gamma * next_v - v[:, t]
        cur = delta + gamma * lam * last
        adv[:, t] = torch.where(mt, cur, torch.zeros_like(cur))
        last = torch.where(mt, cur, last)
        next_v = torch.where(mt, v[:, t], next_v)
    returns = torch.where(m, adv + v, torch.zeros_like(adv))
    return adv, returns


def ppo_token_rewards(rewards: torch.Tensor, mask: torch.Tensor, old_logps=None, ref_logps=None,
                      kl_coef: float = 0.0) -> torch.Tensor:
    """``[N, T]`` per-token rewards: the sequence reward on the last completion token, minus
    ``kl_coef * (old_logp - ref_logp)`` on every completion token when ``kl_coef > 0``."""
    m = mask.bool()
    out = torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    if kl_coef > 0:
        if old_logps is None or ref_logps is None:
            raise ValueError("ppo: kl_coef > 0 needs old_logps and ref_logps")
        k1 = (old_logps.detach() - ref_logps.detach()).float()
        out = out - kl_coef * torch.where(m, k1, torch.zeros_like(k1))
    T = m.shape[1]
    pos = torch.arange(T, device=m.device).expand_as(m)
    last = torch.where(m, pos, torch.full_like(pos, -1)).max(-1).values  # -1: no token
    has = last >= 0
    rows = torch.nonzero(has).flatten()
    out[rows, last[rows]] += rewards.detach().float().to(out.device)[rows]
    return out


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Shift and scale to mean 0, std 1 over the masked entries (population std)."""
    m = mask.to(x.dtype)
    n = m.sum().clamp_min(1.0)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n
    return torch.where(mask.bool(), (x - mean) / torch.sqrt(var + eps), torch.zeros_like(x))


def ppo_loss(logps: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
             advantages: torch.Tensor, returns: torch.Tensor, *, old_logps: torch.Tensor | None = None,
             old_values: torch.Tensor | None = None, cliprange: float = 0.2,
             cliprange_value: float = 0.2, vf_coef: float = 0.1):
    """``(loss, metrics)`` of the clipped PPO objective (module docstring) from per-token
    log-probs and values ``[N, T]`` and fixed advantages / returns."""
    m = mask.bool()
    mf = m.to(logps.dtype)
    zero = torch.zeros_like(logps)
    lp = torch.where(m, logps, zero)
    old = lp.detach() if old_logps is None else torch.where(m, old_logps.to(logps.dtype), zero)
    v = torch.where(m, values.to(logps.dtype), zero)
    v_old = v.detach() if old_values is None else torch.where(m, old_values.to(logps.dtype), zero)
    A = torch.where(m, advantages.to(logps.dtype), zero)
    R = torch.where(m, returns.to(logps.dtype), zero)
    n = mf.sum().clamp_min(1.0)
    ratio = torch.exp(lp - old)
    pg1 = -A * ratio
    pg2 = -A * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg = torch.where(m, torch.maximum(pg1, pg2), zero).sum() / n
    v_clip = v_old + torch.clamp(v - v_old, -cliprange_value, cliprange_value)
    vf1, vf2 = (v - R) ** 2, (v_clip - R) ** 2
    vf = 0.5 * torch.where(m, torch.maximum(vf1, vf2), zero).sum() / n
    loss = pg + vf_coef * vf
    with torch.no_grad():
        den = float(n)
        metrics = {"loss": float(loss.detach()), "pg_loss": float(pg.detach()),
                   "vf_loss": float(vf.detach()),
                   "clip_frac": float(((pg2 > pg1) & m).sum()) / den,
                   "value_clip_frac": float(((vf2 > vf1) & m).sum()) / den,
                   "value": float((v * mf).sum()) / den, "returns": float((R * mf).sum()) / den}
    return loss, metrics


class PPOObjective(ReferenceMixin, ObjectiveBase):
    """Clipped PPO with a value head and GAE (see the module docstring)."""

    name = "ppo"
    # What batches this objective consumes: rollouts (lrm_engine.train.rl).
    batch_kind = "rollout"

    def __init__(self, gamma: float = 1.0, lam: float = 0.95, cliprange: float = 0.2,
                 cliprange_value: float = 0.2, vf_coef: float = 0.1, kl_coef: float = 0.05,
                 whiten_advantages: bool = True, ref_model: str | None = None,
                 num_ppo_epochs: int = 1):
        if int(num_ppo_epochs) < 1:
            raise ValueError(f"ppo: num_ppo_epochs must be >= 1, got {num_ppo_epochs}")
        self.num_ppo_epochs = int(num_ppo_epochs)
        if not 0.0 <= gamma <= 1.0 or not 0.0 <= lam <= 1.0:
            raise ValueError(f"ppo: gamma and lam must be in [0, 1], got {gamma}, {lam}")
        if cliprange <= 0 or cliprange_value <= 0:
            raise ValueError("ppo: cliprange and cliprange_value must be positive")
        if vf_coef < 0 or kl_coef < 0:
            raise ValueError("ppo: vf_coef and kl_coef must be >= 0")
        self.gamma, self.lam = float(gamma), float(lam)
        self.cliprange, self.cliprange_value = float(cliprange), float(cliprange_value)
        self.vf_coef, self.kl_coef = float(vf_coef), float(kl_coef)
        self.whiten_advantages = bool(whiten_advantages)
        self.ref_model_path = ref_model or None
        self.ref_model = None
        self.value_head: torch.nn.Module | None = None

    def setup(self, model, device) -> None:
        if self.value_head is None:
            hidden = int(model.config.hidden_size)
            self.value_head = torch.nn.Linear(hidden, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
        self.value_head.to(device)
        if self.kl_coef > 0:
            self.setup_reference(model, device)

    def trainable_modules(self) -> dict:
        return {"value_head": self.value_head} if self.value_head is not None else {}

    @property
    def rollout_passes(self) -> int:
        """Optimisation passes over each rollout batch (num_ppo_epochs)."""
        return self.num_ppo_epochs

    def rollout_stats(self, model, batch) -> dict:
        """At rollout time, no grad: ``old_logps``, ``old_values`` (and ``ref_logps``)."""
        if self.value_head is None:
            self.setup(model, batch["input_ids"].device)
        ids, am = batch["input_ids"], batch.get("attention_mask")
        logps, hidden = token_logps(model, ids, am, return_hidden=True)
        out = {"old_logps": logps, "old_values": self.values(hidden)}
        if self.kl_coef > 0:
            out["ref_logps"] = self.reference_token_logps(model, ids, am)
        return out

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, T]``: V[:, t] = value_head(h[:, t-1]), 0 at t = 0."""
        v = self.value_head(hidden.float()).squeeze(-1)
        return torch.nn.functional.pad(v[:, :-1], (1, 0), value=0.0)

    def loss(self, model, batch):
        if self.value_head is None:
            self.setup(model, batch["input_ids"].device)
        ids, am, cm = batch["input_ids"], batch.get("attention_mask"), batch["completion_mask"]
        logps, hidden = token_logps(model, ids, am, return_hidden=True)
        values = self.values(hidden)
        old_logps = batch.get("old_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        old_values = batch.get("old_values")
        old_values = values.detach() if old_values is None else old_values
        ref = None
        if self.kl_coef > 0:
            ref = batch.get("ref_logps")
            if ref is None:
                ref = self.reference_token_logps(model, ids, am)
        tok_r = ppo_token_rewards(batch["rewards"], cm, old_logps, ref, self.kl_coef)
        adv, ret = gae(tok_r, old_values.float(), cm, self.gamma, self.lam)
        with torch.no_grad():
            mf = cm.float()
            den = float(mf.sum().clamp_min(1.0))
            adv_mean = float((adv * mf).sum()) / den
            kl = 0.0
            if ref is not None:
                d = torch.where(cm.bool(), old_logps.float() - ref.float(), torch.zeros_like(mf))
                kl = float(d.sum()) / den
        if self.whiten_advantages:
            adv = whiten(adv, cm)
        loss, metrics = ppo_loss(logps, values, cm, adv, ret, old_logps=old_logps,
                                 old_values=old_values, cliprange=self.cliprange,
                                 cliprange_value=self.cliprange_value, vf_coef=self.vf_coef)
        metrics.update(advantage=adv_mean, kl=kl, reward=float(batch["rewards"].float().mean()))
        return loss, metrics

    def loss_weight(self, batch) -> float:
        return float(max(1, int(batch["completion_mask"].sum())))

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_coef}


def make_ppo_objective(**kwargs) -> PPOObjective:
    """Registry factory for ``objective=ppo`` (keywords: see :class:`PPOObjective`)."""
    kwargs.pop("name", None)
    return PPOObjective(**kwargs)
