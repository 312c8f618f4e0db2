"""``dpo`` and ``ipo``: direct preference optimisation against a frozen reference model.

Batch (:func:`lrm_engine.train.pref_data.collate_pref`): for each side ``s`` in
(``chosen``, ``rejected``) ``s_input_ids [B, T]``, ``s_attention_mask [B, T]`` and
``s_completion_mask [B, T]`` (1 where the token is a completion token; both sides padded to the
same ``T``); optionally ``score_chosen`` / ``score_rejected [B]`` (``odpo``) and precomputed
reference sequence log-probs ``ref_chosen_logps`` / ``ref_rejected_logps [B]`` (summed over
the completion; then no reference forward runs, except for length-normalised IPO, which needs
per-token means and recomputes them). Per-token log-probs follow :mod:`lrm_engine.objectives.logprobs`.

Sequence log-probs. ``pi_w = sum_t m_w[t] log pi(y_w[t] | x, y_w[<t])`` (summed over the
chosen completion's tokens), likewise ``pi_l`` (rejected) and ``ref_w``, ``ref_l`` under the
frozen reference. The DPO margin ("h") is

    h = (pi_w - ref_w) - (pi_l - ref_l)

Losses per pair (``beta`` = β, ``label_smoothing`` = ε):

- ``loss_type="sigmoid"`` (DPO, Rafailov et al. 2023; conservative DPO when ε > 0):
  ``loss = -(1 - ε) log σ(β h) - ε log σ(-β h)`` with **summed** log-ratios;
- ``loss_type="ipo"`` (IPO, Azar et al. 2023): ``loss = (h - 1/(2β))²``. Length normalisation:
  with ``ipo_length_norm=True`` (the default, as TRL does) every sequence log-prob in h —
  policy and reference, chosen and rejected — is the **per-token mean** ``pi_w / |y_w|``
  instead of the sum; ``ipo_length_norm=False`` uses the summed log-probs. ε is not used.

The batch loss is the mean over *valid* pairs. A pair is valid when both its completions have
at least one scored token; a pair with a fully masked side carries no preference signal: it is
left out of the mean and the metrics (never NaN). A batch with no valid pair gives loss
``0 * sum(log-probs)``: zero, with a zero gradient. With gradient accumulation the loop weights
micro-batches by their number of valid pairs (:meth:`loss_weight`), so a step is the mean over
all its valid pairs.

Reference model: loaded once in ``setup`` (``ref_model``: a local model folder) or a frozen copy
of the starting policy (see :class:`~lrm_engine.objectives.logprobs.ReferenceMixin`).

Metrics: ``loss``, ``reward_chosen`` = mean β(pi_w - ref_w), ``reward_rejected`` = mean
β(pi_l - ref_l), ``reward_margin`` (their difference, = mean β h), ``reward_acc`` (share of
pairs with β h > 0), ``logp_chosen``, ``logp_rejected`` (policy, as used in h), ``pairs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ObjectiveBase
from .logprobs import ReferenceMixin, masked_sum, token_logps

LOSS_TYPES = ("sigmoid", "ipo")
SIDES = ("chosen", "rejected")


def sequence_logps(tok_logps: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """``[B]``: masked sum of per-token log-probs, or the per-token mean (``average``; a row
    with no scored token gives 0)."""
    s = masked_sum(tok_logps, mask)
    if average:
        s = s / mask.to(s.dtype).sum(-1).clamp_min(1.0)
    return s


def preference_logits(pi_w, pi_l, ref_w, ref_l) -> torch.Tensor:
    """The DPO margin h = (pi_w - ref_w) - (pi_l - ref_l), per pair."""
    return (pi_w - ref_w) - (pi_l - ref_l)


def dpo_loss(pi_w: torch.Tensor, pi_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, *,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             offset: torch.Tensor | None = None, valid: torch.Tensor | None = None):
    """``(loss, metrics)`` from sequence log-probs ``[B]`` (see the module docstring).

    ``offset`` (``odpo``): subtracted from β h inside the sigmoid. ``valid`` (bool ``[B]``):
    pairs that enter the mean (default all).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    h = preference_logits(pi_w, pi_l, ref_w, ref_l)
    if loss_type == "sigmoid":
        z = beta * h
        if offset is not None:
            z = z - offset
        per = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    else:
        per = (h - 1.0 / (2.0 * beta)) ** 2
    if valid is None:
        valid = torch.ones_like(h, dtype=torch.bool)
    n = int(valid.sum())
    if n == 0:
        loss = (pi_w.sum() + pi_l.sum()) * 0.0
        return loss, {"loss": 0.0, "reward_chosen": 0.0, "reward_rejected": 0.0,
                      "reward_margin": 0.0, "reward_acc": 0.0, "logp_chosen": 0.0,
                      "logp_rejected": 0.0, "pairs": 0.0}
    # where() (not indexing) keeps invalid rows out of the value *and* the gradient
    loss = torch.where(valid, per, torch.zeros_like(per)).sum() / n
    with torch.no_grad():
        v = valid
        rc, rr = beta * (pi_w - ref_w)[v], beta * (pi_l - ref_l)[v]
        metrics = {"loss": float(loss.detach()), "reward_chosen": float(rc.mean()),
                   "reward_rejected": float(rr.mean()), "reward_margin": float((rc - rr).mean()),
                   "reward_acc": float((rc > rr).float().mean()),
                   "logp_chosen": float(pi_w[v].mean()), "logp_rejected": float(pi_l[v].mean()),
                   "pairs": float(n)}
    return loss, metrics


class DPOObjective(ReferenceMixin, ObjectiveBase):
    """DPO / IPO on (prompt, chosen, rejected) pairs (see the module docstring)."""

    name = "dpo"
    # What batches this objective consumes: preference pairs (lrm_engine.train.pref_data).
    batch_kind = "pref"
    # Whether records must carry score_chosen / score_rejected (odpo).
    requires_scores = False

    def __init__(self, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 ipo_length_norm: bool = True, ref_model: str | None = None):
        if beta <= 0:
            raise ValueError(f"{self.name}: beta must be positive, got {beta}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"{self.name}: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"{self.name}: label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta, self.loss_type = float(beta), loss_type
        self.label_smoothing = float(label_smoothing)
        self.ipo_length_norm = bool(ipo_length_norm)
        self.ref_model_path = ref_model or None
        self.ref_model = None

    @property
    def average_logps(self) -> bool:
        return self.loss_type == "ipo" and self.ipo_length_norm

    def setup(self, model, device) -> None:
        self.setup_reference(model, device)

    # -- pieces ---------------------------------------------------------------------------
    @staticmethod
    def _stacked(batch):
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
        am = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
        cm = torch.cat([batch["chosen_completion_mask"], batch["rejected_completion_mask"]])
        return ids, am, cm

    def sequence_logps(self, model, batch):
        """Policy and reference ``(pi_w, pi_l, ref_w, ref_l, valid)``, one forward per model over
        the chosen and rejected rows stacked."""
        ids, am, cm = self._stacked(batch)
        B = batch["chosen_input_ids"].shape[0]
        avg = self.average_logps
        pol = sequence_logps(token_logps(model, ids, am), cm, avg)
        if batch.get("ref_chosen_logps") is not None and not avg:
            ref_w, ref_l = batch["ref_chosen_logps"].float(), batch["ref_rejected_logps"].float()
        else:
            ref = sequence_logps(self.reference_token_logps(model, ids, am), cm, avg)
            ref_w, ref_l = ref[:B], ref[B:]
        n = cm.sum(-1)
        valid = (n[:B] > 0) & (n[B:] > 0)
        return pol[:B], pol[B:], ref_w, ref_l, valid

    def offset(self, batch, valid):
        return None

    def loss(self, model, batch):
        pi_w, pi_l, ref_w, ref_l, valid = self.sequence_logps(model, batch)
        return dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=self.beta, loss_type=self.loss_type,
                        label_smoothing=self.label_smoothing, offset=self.offset(batch, valid),
                        valid=valid)

    def loss_weight(self, batch) -> float:
        n_w = batch["chosen_completion_mask"].sum(-1)
        n_l = batch["rejected_completion_mask"].sum(-1)
        return float(max(1, int(((n_w > 0) & (n_l > 0)).sum())))

    def num_tokens(self, batch) -> int:
        return int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())

    def state_dict(self) -> dict:
        return {"beta": self.beta, "loss_type": self.loss_type}


def make_dpo_objective(**kwargs) -> DPOObjective:
    """Registry factory for ``objective=dpo`` (keywords: see :class:`DPOObjective`)."""
    kwargs.pop("name", None)
    return DPOObjective(**kwargs)


def make_ipo_objective(**kwargs) -> DPOObjective:
    """Registry factory for ``objective=ipo``: :class:`DPOObjective` with ``loss_type="ipo"``."""
    kwargs.pop("name", None)
    kwargs.setdefault("loss_type", "ipo")
    obj = DPOObjective(**kwargs)
    obj.name = "ipo"
    return obj
