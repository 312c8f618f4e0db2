"""``prm_token``: the token-logit PRM (Math-Shepherd style).

At each step's last token — the step tag when the model uses one, else the step's own last token
(the delimiter) — the score is P(good) under the softmax over the good and bad tokens' logits
only: the fused PRM head op on the C = 2 rows of the LM head, never full-vocabulary logits.

Defaults (``good_token="+"``, ``bad_token="-"``, ``step_tag=None``) follow the ``prm`` objective
convention: see :func:`prm_token_defaults` (read from ``lrm_engine.objectives.prm`` when that
module defines them).
"""

from __future__ import annotations

import torch

from lrm_engine.rewards.head_op import head_probs
from lrm_engine.rewards.incremental import IncrementalPRM

# Used when lrm_engine.objectives.prm does not define its own.
GOOD_TOKEN = "+"
BAD_TOKEN = "-"
STEP_TAG = None


def prm_token_defaults(model_dir=None) -> dict:
    """good_token / bad_token / step_tag a prm_token model was trained with.

    From the model folder's ``prm_config.json`` (written by ``lrm train objective=prm``) when it
    has one; else the ``prm`` objective's defaults (``PRMObjective``'s constructor); else "+",
    "-". ``step_tag`` None means the policy's step delimiter (what the objective uses).
    """
    import inspect
    import json
    from pathlib import Path

    out = {"good_token": GOOD_TOKEN, "bad_token": BAD_TOKEN, "step_tag": STEP_TAG}
    try:
        from lrm_engine.objectives.prm import PRMObjective

        params = inspect.signature(PRMObjective.__init__).parameters
        for key in ("good_token", "bad_token"):
            if key in params and isinstance(params[key].default, str):
                out[key] = params[key].default
    except ImportError:
        pass
    if model_dir is not None:
        f = Path(str(model_dir)) / "prm_config.json"
        if f.is_file():
            doc = json.loads(f.read_text())
            for key in ("good_token", "bad_token", "step_tag"):
                if isinstance(doc.get(key), str):
                    out[key] = doc[key]
    return out


def single_token_id(tokenizer, text: str, what: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{what} {text!r} must be exactly one token of the PRM's tokenizer, got ids {ids}")
    return int(ids[0])


class TokenPRM(IncrementalPRM):
    """Math-Shepherd token-logit PRM over a causal LM: score = P(good | {good, bad})."""

    name = "prm_token"

    def __init__(self, model, tokenizer, *, good_token: str = GOOD_TOKEN, bad_token: str = BAD_TOKEN,
                 step_tag: str | None = STEP_TAG, **kw):
        super().__init__(model, tokenizer, step_tag=step_tag, **kw)
        self.good_token_id = single_token_id(tokenizer, good_token, "good_token")
        self.bad_token_id = single_token_id(tokenizer, bad_token, "bad_token")
        if self.good_token_id == self.bad_token_id:
            raise ValueError("good_token and bad_token must be different tokens")
        head = model.get_output_embeddings()
        idx = torch.tensor([self.good_token_id, self.bad_token_id], device=head.weight.device)
        # The C = 2 candidate rows of the LM head (and bias), extracted once.
        self.rows = head.weight.detach().index_select(0, idx).contiguous()
        b = getattr(head, "bias", None)
        self.bias = b.detach().index_select(0, idx).contiguous() if b is not None else None

    def _head(self, hidden, positions):
        return head_probs(hidden, positions, self.rows, self.bias, self.backend)[:, 0]
