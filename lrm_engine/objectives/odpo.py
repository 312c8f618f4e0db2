"""``odpo``: DPO with an offset (Amini, Vieira and Cotterell 2024, "Direct Preference
Optimization with an Offset").

The chosen response must beat the rejected one by a margin that grows with how much better it
is. With h the DPO margin (summed log-ratios, exactly as in :mod:`lrm_engine.objectives.dpo`)
and ``r_w``, ``r_l`` the scores of the chosen and rejected completions (the batch's
``score_chosen`` / ``score_rejected``; e.g. verifier or reward-model scores), the loss per pair is

    loss = -(1 - ε) log σ(β h - Δ) - ε log σ(-(β h - Δ)),    Δ = α · log(r_w - r_l)

(ε = ``label_smoothing``, 0 by default: the paper's loss ``-log σ(β h - α log(r_w - r_l))``).
``alpha`` = α scales the offset; α = 0 is plain DPO.

The offset needs ``r_w > r_l``. A pair with ``r_w <= r_l`` (or a missing / non-finite score)
is refused with a clear error: the data loader rejects such records (``file:line`` reason,
skipped and counted, see :func:`lrm_engine.train.pref_data.validate_pref_record` with
``require_margin=True``), and :func:`odpo_offset` raises :class:`ValueError` naming the pairs
if one still reaches the loss. The offset is computed from the data only (no gradient).
Batch reduction, invalid (fully masked) pairs and metrics as for ``dpo``, plus ``offset`` (the
mean Δ over valid pairs).
"""

from __future__ import annotations

import math

import torch

from .dpo import DPOObjective


def odpo_offset(score_chosen: torch.Tensor, score_rejected: torch.Tensor, alpha: float,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """``Δ = α log(r_w - r_l)`` per pair; :class:`ValueError` when some pair has ``r_w <= r_l``."""
    rw, rl = score_chosen.double(), score_rejected.double()
    if valid is None:
        valid = torch.ones_like(rw, dtype=torch.bool)
    bad = valid & ~(torch.isfinite(rw) & torch.isfinite(rl) & (rw > rl))
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        show = ", ".join(f"pair {i}: r_w={float(rw[i])!r}, r_l={float(rl[i])!r}" for i in idx[:5])
        raise ValueError(
            f"odpo: {len(idx)} pair(s) with r_w <= r_l (or a missing score) — the offset "
            f"alpha*log(r_w - r_l) needs the chosen score to exceed the rejected one ({show}); "
            f"drop or fix these pairs (the pref-data loader rejects them with require_margin=True)")
    diff = torch.where(valid, rw - rl, torch.ones_like(rw))
    return (alpha * torch.log(diff)).to(score_chosen.dtype)


class ODPOObjective(DPOObjective):
    """DPO with the offset α log(r_w - r_l) (see the module docstring)."""

    name = "odpo"
    requires_scores = True

    def __init__(self, beta: float = 0.1, alpha: float = 1.0, label_smoothing: float = 0.0,
                 ref_model: str | None = None):
        super().__init__(beta=beta, loss_type="sigmoid", label_smoothing=label_smoothing,
                         ref_model=ref_model)
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"odpo: alpha must be a finite number >= 0, got {alpha}")
        self.alpha = float(alpha)

    def offset(self, batch, valid):
        if batch.get("score_chosen") is None or batch.get("score_rejected") is None:
            raise ValueError("odpo: the batch has no score_chosen / score_rejected; ODPO needs "
                             "the scores of both completions (pref records with scores)")
        return odpo_offset(batch["score_chosen"].float(), batch["score_rejected"].float(),
                           self.alpha, valid)

    def loss(self, model, batch):
        loss, metrics = super().loss(model, batch)
        with torch.no_grad():
            pi_valid = (batch["chosen_completion_mask"].sum(-1) > 0) & \
                       (batch["rejected_completion_mask"].sum(-1) > 0)
            if bool(pi_valid.any()):
                off = self.offset(batch, pi_valid)[pi_valid]
                metrics["offset"] = float(off.mean())
            else:
                metrics["offset"] = 0.0
        return loss, metrics

    def state_dict(self) -> dict:
        return super().state_dict() | {"alpha": self.alpha}


def make_odpo_objective(**kwargs) -> ODPOObjective:
    """Registry factory for ``objective=odpo`` (keywords: see :class:`ODPOObjective`)."""
    kwargs.pop("name", None)
    return ODPOObjective(**kwargs)
