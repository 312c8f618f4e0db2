"""``prm_token``: the token-logit PRM (Math-Shepherd style).

Two read-outs of the same causal LM (``readout``):

- ``"tag"`` (Math-Shepherd): at each step's last token — the step tag when the model uses one,
  else the step's own last token (the delimiter) — the score is P(good) under the softmax over
  the good and bad tokens' logits only: the fused PRM head op on the C = 2 rows of the LM head,
  never full-vocabulary logits.
- ``"likelihood"`` (a generative PRM): the score is the PRM's own probability of the step's
  least likely token, ``min_t p(x_t | prefix, x_<t)`` over the step's tokens before the step
  tag. The first token is predicted at the parent's last position, whose hidden state the
  incremental PRM keeps per node (``keeps_last_hidden``): so a premature answer line or a
  wrongly started step is judged too. A step the PRM would not have written scores low. The
  ``prm`` objective trains this read-out with the same cross-entropy against the step labels
  (its ``readout="likelihood"``).

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
# The read-outs of a token PRM (see the module docstring).
READOUTS = ("tag", "likelihood")


def prm_token_defaults(model_dir=None) -> dict:
    """good_token / bad_token / step_tag a prm_token model was trained with.

    From the model folder's ``prm_config.json`` (written by ``lrm train objective=prm``) when it
    has one; else the ``prm`` objective's defaults (``PRMObjective``'s constructor); else "+",
    "-". ``step_tag`` None means the policy's step delimiter (what the objective uses).
    """
    import inspect
    import json
    from pathlib import Path

    out = {"good_token": GOOD_TOKEN, "bad_token": BAD_TOKEN, "step_tag": STEP_TAG, "readout": "tag"}
    try:
        from lrm_engine.objectives.prm import PRMObjective

        params = inspect.signature(PRMObjective.__init__).parameters
        for key in ("good_token", "bad_token"):
            if key in params and isinstance(params[key].default, str):
                out[key] = params[key].default
    except ImportError:
        pass
    if model_dir is not None:
        doc = model_read_out(model_dir)
        for key in ("good_token", "bad_token", "step_tag", "readout"):
            if isinstance(doc.get(key), str):
                out[key] = doc[key]
    return out


# What training writes into a model folder: prm_config.json (objective=prm), orm_config.json
# (objective=orm); the first one present is the folder's read-out.
READ_OUT_FILES = ("prm_config.json", "orm_config.json")


def model_read_out(model_dir) -> dict:
    """The read-out document ``lrm train`` wrote into a model folder (``kind``: prm_token,
    prm_head, value_head or orm; ``head``, ``step_tag``, tokens ...), or {} when it has none."""
    import json
    from pathlib import Path

    for name in READ_OUT_FILES:
        f = Path(str(model_dir)) / name
        if f.is_file():
            return json.loads(f.read_text()) | {"file": name}
    return {}


def check_kind(model_dir, want: str, reward: str) -> dict:
    """The folder's read-out, after checking it was trained as ``want`` (a head kind); a folder
    with no read-out file passes (a model from elsewhere)."""
    doc = model_read_out(model_dir)
    have = doc.get("head", doc.get("kind")) if doc else None
    if have is not None and have != want:
        from lrm_engine.models.loading import ModelLoadError

        fix = f"reward=orm reward.head={have}" if doc.get("kind") == "orm" else f"reward={have}"
        raise ModelLoadError(f"reward={reward}: {model_dir} was trained as a {have} model "
                             f"({doc['file']}); use {fix}")
    return doc


def single_token_id(tokenizer, text: str, what: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{what} {text!r} must be exactly one token of the PRM's tokenizer, got ids {ids}")
    return int(ids[0])


class TokenPRM(IncrementalPRM):
    """Token-logit PRM over a causal LM: score = P(good | {good, bad}) at the step tag
    (``readout="tag"``), or the step's least likely token's probability (``"likelihood"``)."""

    name = "prm_token"

    def __init__(self, model, tokenizer, *, good_token: str = GOOD_TOKEN, bad_token: str = BAD_TOKEN,
                 step_tag: str | None = STEP_TAG, readout: str = "tag", **kw):
        if readout not in READOUTS:
            raise ValueError(f"prm_token: readout must be one of {READOUTS}, got {readout!r}")
        super().__init__(model, tokenizer, step_tag=step_tag, **kw)
        self.readout = readout
        self.keeps_last_hidden = readout == "likelihood"
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

    def _span_scores(self, hidden, ids, spans, before=None):
        if self.readout == "tag":
            return super()._span_scores(hidden, ids, spans, before)
        head = self.model.get_output_embeddings()
        return min_token_prob(hidden, ids, spans, head.weight, getattr(head, "bias", None),
                              self.tag_ids or [], before)


def min_token_prob(hidden: torch.Tensor, ids: torch.Tensor, spans, weight: torch.Tensor,
                   bias: torch.Tensor | None = None, tag_ids=(), before: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The likelihood read-out: per span ``(s, e)`` of ``ids [T]`` (hidden ``[T, d]``), the
    smallest ``p(ids[t] | h_{t-1})`` for ``t`` in ``s .. e'-1``, where ``e'`` drops a trailing
    ``tag_ids`` and ``h_{s-1}`` is ``before[k]`` (``[len(spans), d]``) when given, else
    ``hidden[s - 1]``. A span with no such token scores 1. Returns ``[len(spans)]`` float32.
    """
    T, K = hidden.shape[0], len(spans)
    dev = hidden.device
    se = torch.as_tensor(list(spans), dtype=torch.long, device=dev).reshape(K, 2)
    s, stop = se[:, 0], se[:, 1]
    tag = torch.as_tensor(list(tag_ids), dtype=torch.long, device=dev)
    if tag.numel():  # drop a trailing tag (only where the span is longer than it)
        n = tag.numel()
        at = (stop[:, None] - n + torch.arange(n, device=dev)).clamp_min(0)
        has = (ids.to(dev)[at] == tag).all(1) & (stop - s > n)
        stop = torch.where(has, stop - n, stop)
    L = (stop - s).clamp_min(0)  # scored tokens per span
    low = torch.zeros(K, dtype=torch.float32)
    if int(L.sum()) > 0:
        own = torch.repeat_interleave(torch.arange(K, device=dev), L)  # span of each scored token
        first = torch.repeat_interleave(torch.cumsum(L, 0) - L, L)
        tgt = torch.repeat_interleave(s, L) + torch.arange(int(L.sum()), device=dev) - first
        # the token at s is predicted by the one before the span, the rest inside it
        pred = tgt - 1
        h = hidden
        if before is not None:
            h = torch.cat([hidden, before.to(device=dev, dtype=hidden.dtype)])
            pred = torch.where(tgt == torch.repeat_interleave(s, L), T + own, pred)
        logits = h.index_select(0, pred).float() @ weight.float().t()
        if bias is not None:
            logits = logits + bias.float()
        lp = torch.log_softmax(logits, -1).gather(1, ids.to(dev).index_select(0, tgt)[:, None])[:, 0]
        low = low.scatter_reduce(0, own.cpu(), lp.float().cpu(), reduce="amin", include_self=True)
    return low.exp()
