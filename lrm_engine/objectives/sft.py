"""``sft``: supervised fine-tuning, next-token cross-entropy on completion tokens only.

Batch (as built by :func:`lrm_engine.train.data.collate_sft`): ``input_ids [B, T]``,
``labels [B, T]`` (Hugging Face convention: ``labels[b, t]`` is the token at position ``t``
when it is supervised, ``-100`` for prompt, padding and anything not to be learned),
optionally ``attention_mask [B, T]`` and ``position_ids [B, T]`` (packed rows carry position ids
that restart at 0 for every packed example and no attention mask; transformers then builds a
block-diagonal causal mask, so packed examples do not see each other).

Loss, exactly: with ``S = {(b, t) : labels[b, t+1] != -100}``,

    loss = - (1 / |S|) * sum_{(b,t) in S} log softmax(logits[b, t])[labels[b, t+1]]

the mean over supervised tokens of the batch (not a mean of per-sequence means). With
gradient accumulation the loop weights micro-batches by ``|S|`` (:meth:`loss_weight`), so a step
is the per-token mean over all its micro-batches. A batch with no supervised token gives loss
0 (``0 * sum(logits)``: a zero gradient, never NaN).

Metrics: ``loss``, ``token_acc`` (greedy next-token accuracy on S), ``tokens`` (``|S|``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ObjectiveBase

IGNORE_INDEX = -100


class SFTObjective(ObjectiveBase):
    """Cross-entropy on completion tokens only (see the module docstring for the formula)."""

    name = "sft"
    # What batches this objective consumes: the train verb builds SFT data for it.
    batch_kind = "sft"

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"sft: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward_logits(self, model, batch) -> torch.Tensor:
        kw = {"input_ids": batch["input_ids"], "use_cache": False}
        if batch.get("attention_mask") is not None:
            kw["attention_mask"] = batch["attention_mask"]
        if batch.get("position_ids") is not None:
            kw["position_ids"] = batch["position_ids"]
        return model(**kw).logits

    def loss(self, model, batch):
        logits = self.forward_logits(model, batch)
        return sft_loss(logits, batch["labels"], self.label_smoothing)

    def loss_weight(self, batch) -> float:
        return float(max(1, int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())))


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0):
    """``(loss, metrics)`` from full-sequence logits ``[B, T, V]`` and unshifted labels ``[B, T]``."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    n = int(mask.sum())
    if n == 0:
        loss = shift_logits.sum() * 0.0
        return loss, {"loss": 0.0, "token_acc": 0.0, "tokens": 0.0}
    sel_logits = shift_logits[mask]
    sel_labels = shift_labels[mask]
    loss = F.cross_entropy(sel_logits, sel_labels, reduction="mean", label_smoothing=label_smoothing)
    with torch.no_grad():
        acc = (sel_logits.argmax(-1) == sel_labels).float().mean().item()
    return loss, {"loss": float(loss.detach()), "token_acc": acc, "tokens": float(n)}


def make_sft_objective(**kwargs) -> SFTObjective:
    """Registry factory for ``objective=sft`` (keyword arguments: ``label_smoothing``)."""
    kwargs.pop("name", None)
    return SFTObjective(**kwargs)
