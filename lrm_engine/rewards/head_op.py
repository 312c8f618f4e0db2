"""The fused PRM head op, with a torch fallback while the op is not importable.

``lrm_engine.ops.prm_head`` (gather hidden at positions x C candidate rows -> softmax over C) is
the one path used when it imports; if it does not (an older checkout), the same expression runs
in torch (gather P rows, [P, d] x [d, C], softmax) — still never full-vocabulary logits.
"""

from __future__ import annotations

import torch

try:  # the public functions of the fused op
    from lrm_engine.ops.prm_head import prm_head_scores as _fused
except ImportError:  # pragma: no cover — the op module not landed: torch expression
    _fused = None


def head_probs(hidden: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
               bias: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """softmax_C(hidden[positions] @ rows.T + bias) -> [P, C] float32."""
    if _fused is not None:
        return _fused(hidden, positions, rows, bias, backend=backend)
    h = hidden.index_select(0, positions.long()).float()
    logits = h @ rows.float().t()
    if bias is not None:
        logits = logits + bias.float()
    return torch.softmax(logits, -1)
