"""``prm_head`` (two-class head, Qwen2.5-Math-PRM style) and ``value_head`` (sigmoid of a linear
head) over a token-classification decoder, scored incrementally like every IncrementalPRM.

The head is the model's ``score`` (or ``classifier``) module: a Linear, or a Sequential whose
last layer is a Linear (Qwen2.5-Math-PRM: Linear -> ReLU -> Linear); the layers before the last
run on the gathered step rows only.
"""

from __future__ import annotations

import torch

from lrm_engine.rewards.head_op import head_probs
from lrm_engine.rewards.incremental import IncrementalPRM

_HEAD_NAMES = ("score", "classifier", "v_head", "value_head")


def find_head(model):
    """(pre-layers or None, final Linear) of a token-classification model's head."""
    for name in _HEAD_NAMES:
        head = getattr(model, name, None)
        if head is None:
            continue
        if isinstance(head, torch.nn.Linear):
            return None, head
        if isinstance(head, torch.nn.Sequential) and isinstance(head[-1], torch.nn.Linear):
            return (head[:-1] if len(head) > 1 else None), head[-1]
    raise ValueError(
        f"{type(model).__name__} has no linear head among {', '.join(_HEAD_NAMES)}; a prm_head / "
        f"value_head reward needs a token-classification model"
    )


class _Classifier(IncrementalPRM):
    def __init__(self, model, tokenizer, *, outputs: int, **kw):
        super().__init__(model, tokenizer, **kw)
        self.pre, lin = find_head(model)
        if lin.out_features < outputs:
            raise ValueError(f"{self.name} needs a head with >= {outputs} outputs, "
                             f"{type(model).__name__} has {lin.out_features}")
        self.weight = lin.weight.detach()
        self.bias_ = lin.bias.detach() if lin.bias is not None else None

    def _rows(self, hidden, positions):
        """Hidden rows at positions, through the head's pre-layers (if any)."""
        if self.pre is None:
            return hidden, positions
        with torch.inference_mode():
            h = self.pre(hidden.index_select(0, positions.long()))
        return h, torch.arange(h.shape[0], device=h.device)


class TwoClassPRM(_Classifier):
    """Two-class head on the hidden state at each step's last token: score = P(positive_class)."""

    name = "prm_head"

    def __init__(self, model, tokenizer, *, positive_class: int = 1, **kw):
        super().__init__(model, tokenizer, outputs=2, **kw)
        if positive_class not in (0, 1):
            raise ValueError("positive_class must be 0 or 1")
        self.positive_class = positive_class
        self.weight = self.weight[:2]
        self.bias_ = self.bias_[:2] if self.bias_ is not None else None

    def _head(self, hidden, positions):
        h, pos = self._rows(hidden, positions)
        return head_probs(h, pos, self.weight, self.bias_, self.backend)[:, self.positive_class]


class ValueHeadPRM(_Classifier):
    """Value head: score = sigmoid(w . h + b) at each step's last token (one output, C = 1: a
    gathered [P, d] x [d] product; the softmax op has nothing to normalise over)."""

    name = "value_head"

    def __init__(self, model, tokenizer, **kw):
        super().__init__(model, tokenizer, outputs=1, **kw)

    def _head(self, hidden, positions):
        h, pos = self._rows(hidden, positions)
        x = h.index_select(0, pos.long()).float() @ self.weight[0].float()
        if self.bias_ is not None:
            x = x + self.bias_[0].float()
        return torch.sigmoid(x)
