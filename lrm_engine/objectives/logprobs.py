"""Per-token log-probabilities and the frozen reference model, shared by the preference
(DPO family) and RL (GRPO, PPO) objectives.

Convention (every objective of this family): per-token arrays are aligned with ``input_ids``
positions. ``token_logps(model, input_ids, attention_mask)[b, t]`` is
``log p(input_ids[b, t] | input_ids[b, :t])`` for ``t >= 1`` and ``0`` at ``t = 0`` (nothing
predicts the first token). A ``completion_mask [B, T]`` marks the positions whose token is
scored (the completion tokens; never position 0), so

    seq_logp[b] = sum_t completion_mask[b, t] * token_logps[b, t]

is the log-probability of the completion given its context (prompt, plus the step prefix for
``step_dpo``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F


def _forward(model, input_ids, attention_mask=None, *, hidden: bool = False):
    kw: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    if hidden:
        kw["output_hidden_states"] = True
    return model(**kw)


def logps_from_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` float32 per-token log-probs from full logits ``[B, T, V]`` (0 at position 0)."""
    lp = F.log_softmax(logits[:, :-1, :].float(), dim=-1)
    tok = lp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return F.pad(tok, (1, 0), value=0.0)


def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *, return_hidden: bool = False):
    """Per-token log-probs ``[B, T]`` (see the module docstring); with ``return_hidden`` also
    the last hidden states ``[B, T, d]`` (for a value head)."""
    out = _forward(model, input_ids, attention_mask, hidden=return_hidden)
    lp = logps_from_logits(out.logits, input_ids)
    if return_hidden:
        return lp, out.hidden_states[-1]
    return lp


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t mask[b, t] * x[b, t]`` per row, ``[B]``."""
    return (x * mask.to(x.dtype)).sum(-1)


def frozen_copy(model) -> torch.nn.Module:
    """A frozen (no grad, eval mode) deep copy of ``model``: the reference policy."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def load_reference(path: str, device) -> torch.nn.Module:
    """A frozen reference model loaded once from a local Hugging Face folder."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    ref = ref.to(device)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class ReferenceMixin:
    """A frozen reference model, built once in ``setup``.

    ``ref_model`` (a local model folder) is loaded from disk; null takes a frozen copy of the
    policy as it is when ``setup`` runs — the loop calls ``setup`` before it restores a
    checkpoint, so after a resume the copy is again the *starting* policy (rebuilt from the same
    init folder / seed), never the partly trained one. ``setup`` keeps an existing reference.
    Batches may also carry precomputed reference log-probs (then no reference forward runs).
    """

    ref_model_path: str | None = None
    ref_model: torch.nn.Module | None = None

    def setup_reference(self, model, device) -> None:
        if self.ref_model is not None:
            self.ref_model.to(device)
            return
        if self.ref_model_path:
            self.ref_model = load_reference(self.ref_model_path, device)
        else:
            self.ref_model = frozen_copy(model).to(device)

    def reference_token_logps(self, model, input_ids, attention_mask=None) -> torch.Tensor:
        if self.ref_model is None:
            self.setup_reference(model, input_ids.device)
        with torch.no_grad():
            return token_logps(self.ref_model, input_ids, attention_mask)

    def rollout_logps(self, model, batch, reference: bool) -> dict:
        """At rollout time (the caller holds no grad): the sampling weights' ``old_logps``, and
        ``ref_logps`` when ``reference``."""
        ids, am = batch["input_ids"], batch.get("attention_mask")
        out = {"old_logps": token_logps(model, ids, am)}
        if reference:
            out["ref_logps"] = self.reference_token_logps(model, ids, am)
        return out
