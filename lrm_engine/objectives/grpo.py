"""``grpo``: Group Relative Policy Optimisation (Shao et al. 2024, DeepSeekMath), with the loss
aggregation variants of TRL's ``GRPOTrainer`` (``loss_type``).

Batch (a rollout batch, e.g. from :mod:`lrm_engine.train.rl`): ``input_ids [N, T]``,
``attention_mask [N, T]``, ``completion_mask [N, T]`` (1 at the generated tokens; per-token
arrays follow :mod:`lrm_engine.objectives.logprobs`), ``rewards [N]`` and ``group_offsets
[G + 1]`` (int64 CSR: the completions of group ``g`` — one prompt — are rows
``group_offsets[g]:group_offsets[g+1]``, so a group's rows are contiguous); optionally
``advantages [N]`` (precomputed; then rewards/offsets are not read), ``old_logps [N, T]`` (the
sampling policy's per-token log-probs, for several updates per generation; absent: the
current policy's, detached — the on-policy single-update case, ratio 1 with the gradient of
the policy-gradient estimator), ``ref_logps [N, T]`` (absent: computed by the frozen
reference model) and ``max_completion_length`` (for ``dr_grpo``).

Passes per generation (``num_iterations`` = μ of the GRPO paper, TRL's ``num_iterations``):
with μ > 1 the run optimises each rollout batch μ times
(:class:`lrm_engine.train.rl_replay.ReplaySource`); :meth:`GRPOObjective.rollout_stats` then
records ``old_logps`` (and ``ref_logps``) once at rollout time, with no gradient, so from the
second pass on the ratio moves away from 1 and the clip acts. μ = 1: no ``old_logps`` (the
current ones, detached, as in TRL).

Advantages. Per group, via the ``group_normalize`` op (:func:`lrm_engine.ops.group_normalize`):

    A_i = (r_i - mean_g(r)) / (std_g(r) + 1e-4)     (scale_rewards=True; std unbiased, as TRL)
    A_i = r_i - mean_g(r)                           (scale_rewards=False, or loss_type=dr_grpo)

``loss_type=dr_grpo`` always takes the unscaled form: Dr. GRPO (Liu et al. 2025) removes both
the length normaliser and the std division, and TRL ignores ``scale_rewards`` for it.

A group with a single completion has std := 0 and gets ``A = 0`` (TRL's torch.std would give
NaN); a group whose rewards are all equal gets ``A = 0`` for every member. Such groups then
contribute only the KL term (no policy-gradient signal). The share of groups with zero reward
spread is logged as ``zero_std_frac``.

Per-token loss (ρ = exp(logp - old_logp), ε = ``epsilon``, ε_high = ``epsilon_high``, default ε):

    l_{i,t} = -min(ρ A_i, clip(ρ, 1 - ε, 1 + ε_high) A_i) + β k3_{i,t}
    k3_{i,t} = exp(ref_{i,t} - logp_{i,t}) - (ref_{i,t} - logp_{i,t}) - 1      (β = ``beta``)

(k3 ≥ 0 is the unbiased "k3" estimator of KL(π || π_ref) per token; β = 0 skips the reference
entirely.) Aggregation over the micro-batch, with m the completion mask, N its rows and
L = ``max_completion_length`` — exactly TRL's definitions:

- ``grpo``:    loss = (1/N) Σ_i [ Σ_t m_{i,t} l_{i,t} / max(1, Σ_t m_{i,t}) ]
  (per-sequence token mean, then mean over sequences; favours short sequences' tokens);
- ``bnpo``:    loss = Σ_{i,t} m l / max(1, Σ_{i,t} m)   (token mean over the micro-batch);
- ``dr_grpo``: loss = Σ_{i,t} m l / (N · L)             (a constant normaliser: no length bias);
- ``dapo``:    loss = Σ_{i,t} m l / (number of completion tokens in the whole accumulated step)
  (TRL's ``num_items_in_batch``: the token mean over all micro-batches of one optimiser step).

Gradient accumulation. TRL divides each micro-batch's ``grpo``/``bnpo``/``dr_grpo`` loss by the
number of accumulation steps (an equal-weight mean of micro-batch losses): here
:meth:`loss_weight` is 1 for those. For ``dapo`` the micro-batch loss is its token mean and
:meth:`loss_weight` is its token count, so the loop's ``Σ w_k loss_k / Σ w_k`` is exactly the
sum over the step's tokens divided by the step's token count.

Fully masked sequences (no completion token): they add nothing to any sum; under ``grpo`` and
``dr_grpo`` they still count in N (as in TRL); a micro-batch with no completion token at all
gives loss 0 with a zero gradient (never NaN). Masked positions are zeroed *before* the
exponentials, so padding log-probs can never produce inf/NaN.

Metrics: ``loss``, ``kl`` (token mean of k3), ``clip_low`` / ``clip_high`` (share of tokens with
ρ A clipped below / above: ρ < 1 - ε with A < 0, ρ > 1 + ε_high with A > 0, TRL's
``clip_ratio/low_mean`` / ``high_mean``), ``clip_ratio`` (their sum, TRL's ``region_mean``: the
tokens whose gradient the clip removes), ``reward`` / ``reward_std`` (mean and mean within-group std of the
rewards), ``zero_std_frac``, ``completion_len`` (mean tokens per completion).
"""

from __future__ import annotations

import torch

from .base import ObjectiveBase
from .logprobs import ReferenceMixin, token_logps

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
ADV_EPS = 1e-4


def grpo_advantages(rewards: torch.Tensor, group_offsets: torch.Tensor, scale_rewards: bool = True,
                    eps: float = ADV_EPS) -> torch.Tensor:
    """Group-normalised advantages ``[N]`` (see the module docstring), float32."""
    from lrm_engine import ops

    r = rewards.detach().float().reshape(-1)
    off = torch.as_tensor(group_offsets, dtype=torch.long, device=r.device).reshape(-1)
    if off.numel() < 2 or int(off[0]) != 0 or int(off[-1]) != r.numel() \
            or bool((off[1:] < off[:-1]).any()):
        raise ValueError(f"grpo: group_offsets must be a non-decreasing CSR array from 0 to "
                         f"{r.numel()} (the rows), got {off.tolist()}")
    if scale_rewards:
        return ops.group_normalize(r, off, eps, True).to(r.dtype)
    # no std scaling: (x - mean_g) * (std_g + eps) / (std_g + eps) would be lossy; use means
    lengths = off[1:] - off[:-1]
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=r.device), lengths)
    sums = torch.zeros(lengths.numel(), dtype=r.dtype, device=r.device).index_add_(0, seg, r)
    mean = sums / lengths.clamp_min(1).to(r.dtype)
    return r - mean[seg]


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` (>= 0)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1.0


def grpo_loss(logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *,
              old_logps: torch.Tensor | None = None, ref_logps: torch.Tensor | None = None,
              beta: float = 0.04, epsilon: float = 0.2, epsilon_high: float | None = None,
              loss_type: str = "grpo", max_completion_length: int | None = None,
              dapo_normalizer: float | None = None):
    """``(loss, metrics)`` from per-token log-probs ``[N, T]`` (module docstring).

    ``advantages``: ``[N]`` (one per sequence, GRPO) or ``[N, T]`` (one per token, e.g. the
    segment advantages of ``tree_grpo``); the formulas above hold with ``A_{i,t}`` for ``A_i``.

    ``dapo_normalizer``: the step's completion-token count for ``dapo`` (default: this
    micro-batch's, which the loop's token-count weights turn into the step's).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"grpo: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    eps_hi = epsilon if epsilon_high is None else epsilon_high
    m = mask.bool()
    mf = m.to(logps.dtype)
    zero = torch.zeros_like(logps)
    lp = torch.where(m, logps, zero)
    old = lp.detach() if old_logps is None else torch.where(m, old_logps.to(logps.dtype), zero)
    A = advantages.to(logps.dtype)
    A = A if A.dim() == 2 else A.reshape(-1, 1)  # [N] per sequence, or [N, T] per token (tree_grpo)
    ratio = torch.exp(lp - old)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_hi)
    per = -torch.minimum(ratio * A, clipped * A)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("grpo: beta != 0 needs ref_logps")
        ref = torch.where(m, ref_logps.to(logps.dtype), zero)
        kl = k3_kl(lp, ref)
        per = per + beta * kl
    per = torch.where(m, per, zero)
    n_tok = mf.sum()
    N = logps.shape[0]
    if loss_type == "grpo":
        loss = (per.sum(-1) / mf.sum(-1).clamp_min(1.0)).mean() if N else per.sum()
    elif loss_type == "bnpo":
        loss = per.sum() / n_tok.clamp_min(1.0)
    elif loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("grpo: loss_type='dr_grpo' needs max_completion_length")
        loss = per.sum() / (max(N, 1) * float(max_completion_length))
    else:  # dapo
        norm = n_tok.clamp_min(1.0) if dapo_normalizer is None else max(float(dapo_normalizer), 1.0)
        loss = per.sum() / norm
    with torch.no_grad():
        den = float(n_tok.clamp_min(1.0))
        low = ((ratio < 1.0 - epsilon) & (A < 0) & m).sum().item() / den
        high = ((ratio > 1.0 + eps_hi) & (A > 0) & m).sum().item() / den
        metrics = {"loss": float(loss.detach()),
                   "kl": float((kl * mf).sum() / den) if kl is not None else 0.0,
                   "clip_low": low, "clip_high": high, "clip_ratio": low + high,
                   "completion_len": float(n_tok) / max(N, 1)}
    return loss, metrics


class GRPOObjective(ReferenceMixin, ObjectiveBase):
    """GRPO loss on rollout groups (see the module docstring)."""

    name = "grpo"
    # What batches this objective consumes: rollout groups (lrm_engine.train.rl).
    batch_kind = "rollout"

    def __init__(self, beta: float = 0.04, epsilon: float = 0.2, epsilon_high: float | None = None,
                 loss_type: str = "grpo", scale_rewards: bool = True,
                 max_completion_length: int | None = None, ref_model: str | None = None,
                 num_iterations: int = 1):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"grpo: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if beta < 0:
            raise ValueError(f"grpo: beta must be >= 0, got {beta}")
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"grpo: epsilon must be in (0, 1), got {epsilon}")
        if epsilon_high is not None and epsilon_high <= 0:
            raise ValueError(f"grpo: epsilon_high must be positive, got {epsilon_high}")
        if int(num_iterations) < 1:
            raise ValueError(f"grpo: num_iterations must be >= 1, got {num_iterations}")
        self.num_iterations = int(num_iterations)
        self.beta, self.epsilon, self.epsilon_high = float(beta), float(epsilon), epsilon_high
        self.loss_type, self.scale_rewards = loss_type, bool(scale_rewards)
        self.max_completion_length = max_completion_length
        self.ref_model_path = ref_model or None
        self.ref_model = None

    def setup(self, model, device) -> None:
        if self.beta != 0.0:
            self.setup_reference(model, device)

    @property
    def rollout_passes(self) -> int:
        """Optimisation passes over each rollout batch (num_iterations)."""
        return self.num_iterations

    def rollout_stats(self, model, batch) -> dict:
        """At rollout time, no grad: the sampling weights' ``old_logps`` (and ``ref_logps``)."""
        return self.rollout_logps(model, batch, reference=self.beta != 0.0)

    def advantages(self, batch) -> torch.Tensor:
        if batch.get("advantages") is not None:
            return batch["advantages"].float()
        scale = self.scale_rewards and self.loss_type != "dr_grpo"  # Dr. GRPO: no std scaling
        return grpo_advantages(batch["rewards"], batch["group_offsets"], scale)

    def loss(self, model, batch):
        ids, am, cm = batch["input_ids"], batch.get("attention_mask"), batch["completion_mask"]
        logps = token_logps(model, ids, am)
        ref = None
        if self.beta != 0.0:
            ref = batch.get("ref_logps")
            if ref is None:
                ref = self.reference_token_logps(model, ids, am)
        adv = self.advantages(batch)
        L = self.max_completion_length or batch.get("max_completion_length")
        loss, metrics = grpo_loss(logps, cm, adv, old_logps=batch.get("old_logps"), ref_logps=ref,
                                  beta=self.beta, epsilon=self.epsilon,
                                  epsilon_high=self.epsilon_high, loss_type=self.loss_type,
                                  max_completion_length=int(L) if L else None)
        if batch.get("rewards") is not None:
            metrics.update(reward_stats(batch["rewards"], batch.get("group_offsets")))
        return loss, metrics

    def loss_weight(self, batch) -> float:
        if self.loss_type == "dapo":
            return float(max(1, int(batch["completion_mask"].sum())))
        return 1.0

    def state_dict(self) -> dict:
        return {"beta": self.beta, "loss_type": self.loss_type}


def reward_stats(rewards: torch.Tensor, group_offsets=None) -> dict[str, float]:
    """``reward`` (mean), ``reward_std`` (mean within-group std, population), ``zero_std_frac``."""
    r = rewards.detach().float().reshape(-1).cpu()
    out = {"reward": float(r.mean()) if r.numel() else 0.0}
    if group_offsets is not None:
        off = torch.as_tensor(group_offsets).reshape(-1).tolist()
        stds = [float(r[a:b].std(unbiased=False)) if b - a > 0 else 0.0
                for a, b in zip(off[:-1], off[1:])]
        out["reward_std"] = sum(stds) / max(len(stds), 1)
        out["zero_std_frac"] = sum(s == 0.0 for s in stds) / max(len(stds), 1)
    return out


def make_grpo_objective(**kwargs) -> GRPOObjective:
    """Registry factory for ``objective=grpo`` (keywords: see :class:`GRPOObjective`)."""
    kwargs.pop("name", None)
    return GRPOObjective(**kwargs)
