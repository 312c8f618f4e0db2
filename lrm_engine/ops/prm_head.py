"""PRM head op: step scores from the C candidate rows of a head, never full-vocabulary logits.

    prm_head_scores(hidden [T, d], positions [P] int64, weight_rows [C, d], bias [C] | None)
        -> probs [P, C] float32 = softmax_C(hidden[positions] @ weight_rows.T + bias)

A process reward model reads its score off the hidden state at each step-tag position:

* token-logit PRM (Math-Shepherd): the LM head's rows of the good and bad tokens (C = 2); the
  step score is P(good) under the softmax restricted to those two tokens, which equals the full
  vocabulary softmax restricted to [good, bad] and renormalised (`token_prm_scores`);
* classification-head PRM (Qwen2.5-Math-PRM): a two-class head, score = P(class 1)
  (`two_class_prm_scores`).

Computing full-vocabulary logits at the step positions and slicing two columns costs P x V x d
multiply-adds and a P x V logits tensor (V = 151,936 for Qwen2.5: 2.5 GB at P = 4,096); this op
costs P x C x d and a P x C output.

Backends (same semantics; `prm_head_scores_reference` is the specification):

* ``reference``: torch (gather, matmul in float32, softmax); any device;
* ``cpp``: lrm_engine._C.prm_head_scores (csrc/cpu/prm_head.cpp), a fused gather + dot + softmax
  over float32 CPU buffers (fp16 / bf16 hidden states are gathered and converted first);
* ``triton``: lrm_engine/ops/triton/prm_head.py; CUDA, or the CPU under ``TRITON_INTERPRET=1``;
* ``auto``: cpp on the CPU (reference if the extension is not built, with a one-time warning),
  triton on CUDA (reference if Triton cannot run). ``cuda`` (the engine-wide kernels option)
  means the GPU kernel of this op, which is the Triton one.

Hidden states of a batch [B, L, d] go in flattened to [B * L, d] with positions b * L + t.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from lrm_engine.ops.dispatch import BackendUnavailableError

PRM_HEAD_BACKENDS = ("reference", "cpp", "triton")

__all__ = [
    "PRM_HEAD_BACKENDS",
    "prm_head_scores",
    "prm_head_scores_reference",
    "prm_head_scores_cpp",
    "token_prm_scores",
    "two_class_prm_scores",
    "candidate_rows",
    "available_prm_head_backends",
]


# ------------------------------------------------------------------------------- validation
def _check(hidden: torch.Tensor, positions: torch.Tensor, weight_rows: torch.Tensor,
           bias: torch.Tensor | None) -> None:
    if hidden.dim() != 2:
        raise ValueError(f"prm_head_scores: hidden must be [T, d], got shape {tuple(hidden.shape)}")
    if positions.dim() != 1:
        raise ValueError(f"prm_head_scores: positions must be [P], got shape {tuple(positions.shape)}")
    if positions.dtype.is_floating_point or positions.dtype == torch.bool or positions.is_complex():
        raise TypeError(f"prm_head_scores: positions must be an integer tensor, got {positions.dtype}")
    if weight_rows.dim() != 2 or weight_rows.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"prm_head_scores: weight_rows must be [C, d] with d = {hidden.shape[1]}, "
            f"got shape {tuple(weight_rows.shape)}"
        )
    if weight_rows.shape[0] < 1:
        raise ValueError("prm_head_scores: weight_rows needs at least one candidate row (C >= 1)")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight_rows.shape[0]):
        raise ValueError(
            f"prm_head_scores: bias must be [C] with C = {weight_rows.shape[0]}, got shape {tuple(bias.shape)}"
        )
    dev = hidden.device
    for name, t in (("positions", positions), ("weight_rows", weight_rows), ("bias", bias)):
        if t is not None and t.device != dev:
            raise ValueError(f"prm_head_scores: {name} is on {t.device} but hidden is on {dev}")


def _check_positions_range(positions: torch.Tensor, T: int) -> None:
    if positions.numel() == 0:
        return
    lo, hi = int(positions.min()), int(positions.max())
    if lo < 0 or hi >= T:
        raise IndexError(
            f"prm_head_scores: step positions must lie in [0, {T}) (the rows of hidden); got "
            f"min {lo}, max {hi}"
        )


# ------------------------------------------------------------------------------- backends
def prm_head_scores_reference(hidden: torch.Tensor, positions: torch.Tensor, weight_rows: torch.Tensor,
                              bias: torch.Tensor | None = None) -> torch.Tensor:
    """The specification: gather the rows, matmul in float32, add the bias, softmax over C."""
    _check(hidden, positions, weight_rows, bias)
    _check_positions_range(positions, hidden.shape[0])
    h = hidden.index_select(0, positions.long()).float()
    logits = h @ weight_rows.float().t()
    if bias is not None:
        logits = logits + bias.float()
    return torch.softmax(logits, dim=-1)


def _cpp_module() -> Any:
    try:
        from lrm_engine import _C
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the compiled extension lrm_engine._C could not be imported ({exc}); build it with "
            "`pip install --no-build-isolation -e .`"
        ) from exc
    if not hasattr(_C, "prm_head_scores"):
        raise BackendUnavailableError(
            "lrm_engine._C was built without prm_head_scores (an old build); rebuild it with "
            "`pip install --no-build-isolation -e .`"
        )
    return _C


def prm_head_scores_cpp(hidden: torch.Tensor, positions: torch.Tensor, weight_rows: torch.Tensor,
                        bias: torch.Tensor | None = None, *, _module: Any = None) -> torch.Tensor:
    """The C++ kernel (CPU tensors). float32 hidden states with contiguous rows are read in place
    (any row stride); other dtypes or layouts have their P rows gathered as float32 first."""
    _check(hidden, positions, weight_rows, bias)
    if hidden.device.type != "cpu":
        raise ValueError(f"prm_head_scores: the cpp backend runs on CPU tensors, hidden is on {hidden.device}")
    mod = _module if _module is not None else _cpp_module()
    T, d = hidden.shape
    C = weight_rows.shape[0]
    pos = positions.to(torch.int64).contiguous()
    P = pos.shape[0]
    if hidden.dtype != torch.float32 or (d > 1 and hidden.stride(1) != 1):
        # Gather the P rows first (not the whole [T, d]), as contiguous float32.
        _check_positions_range(pos, T)
        hidden = hidden.index_select(0, pos).to(torch.float32).contiguous()
        pos = torch.arange(P, dtype=torch.int64)
        T = P
    row_stride = hidden.stride(0) if T > 1 else d
    w = weight_rows.to(torch.float32).contiguous()
    b = bias.to(torch.float32).contiguous() if bias is not None else None
    out = torch.empty((P, C), dtype=torch.float32)
    mod.prm_head_scores(
        hidden.data_ptr(), T, d, row_stride, pos.data_ptr(), P, w.data_ptr(),
        b.data_ptr() if b is not None else 0, C, out.data_ptr(),
    )
    return out


def _triton_impl() -> Callable[..., torch.Tensor]:
    try:
        from lrm_engine.ops.triton import prm_head as tp
    except Exception as exc:  # triton missing / broken
        raise BackendUnavailableError(f"triton could not be imported ({type(exc).__name__}: {exc})") from exc
    why = tp.why_unavailable()
    if why is not None:
        raise BackendUnavailableError(why)
    return tp.prm_head_scores_triton


def prm_head_scores_triton(hidden: torch.Tensor, positions: torch.Tensor, weight_rows: torch.Tensor,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)."""
    _check(hidden, positions, weight_rows, bias)
    if hidden.device.type != "cuda":
        _check_positions_range(positions, hidden.shape[0])
    return _triton_impl()(hidden, positions, weight_rows, bias)


# ------------------------------------------------------------------------------- dispatch
_IMPLS: dict[str, Callable[..., torch.Tensor]] = {}
_ERRORS: dict[str, str] = {}
_warned = False


def _load(name: str) -> Callable[..., torch.Tensor] | None:
    if name in _IMPLS:
        return _IMPLS[name]
    if name in _ERRORS:
        return None
    try:
        if name == "reference":
            fn = prm_head_scores_reference
        elif name == "cpp":
            _cpp_module()
            fn = prm_head_scores_cpp
        elif name == "triton":
            _triton_impl()
            fn = prm_head_scores_triton
        else:  # pragma: no cover
            raise BackendUnavailableError(f"unknown backend {name!r}")
    except BackendUnavailableError as exc:
        _ERRORS[name] = str(exc)
        return None
    _IMPLS[name] = fn
    return fn


def available_prm_head_backends() -> list[str]:
    """Backends of the PRM head op that can run here."""
    return [n for n in PRM_HEAD_BACKENDS if _load(n) is not None]


def _resolve(backend: str, device: torch.device) -> Callable[..., torch.Tensor]:
    global _warned
    if backend == "cuda":  # the engine-wide option: this op's GPU kernel is the Triton one
        backend = "triton"
    if backend == "auto":
        order = ("triton", "reference") if device.type == "cuda" else ("cpp", "reference")
        for cand in order:
            fn = _load(cand)
            if fn is not None:
                if cand == "reference" and not _warned:
                    _warned = True
                    warnings.warn(
                        f"lrm_engine: PRM head op falls back to the torch reference on {device.type} "
                        f"({_ERRORS.get(order[0])})",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                return fn
        raise BackendUnavailableError("no PRM head backend can run here")  # pragma: no cover
    if backend not in PRM_HEAD_BACKENDS:
        raise BackendUnavailableError(
            f"unknown kernel backend {backend!r} for prm_head_scores; choose one of: auto, cuda, "
            f"{', '.join(PRM_HEAD_BACKENDS)}"
        )
    fn = _load(backend)
    if fn is None:
        raise BackendUnavailableError(
            f"kernel backend {backend!r} is not available for prm_head_scores ({_ERRORS.get(backend)}); "
            f"available: {', '.join(available_prm_head_backends())}"
        )
    return fn


def prm_head_scores(hidden: torch.Tensor, positions: torch.Tensor, weight_rows: torch.Tensor,
                    bias: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """probs [P, C] float32 = softmax over C of ``hidden[positions] @ weight_rows.T + bias``.

    hidden [T, d] (float32 / float16 / bfloat16); positions [P] integer row indices in [0, T);
    weight_rows [C, d], C >= 1 (the C candidate rows of an LM head or a classification head);
    bias [C] or None. ``backend``: auto | reference | cpp | triton | cuda (see the module doc).
    """
    return _resolve(backend, hidden.device)(hidden, positions, weight_rows, bias)


# ------------------------------------------------------------------------------- PRM kinds
def candidate_rows(head_weight: torch.Tensor, token_ids: Any,
                   head_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows (and bias entries) of an LM head [V, d] for the given candidate token ids."""
    idx = torch.as_tensor(token_ids, dtype=torch.int64, device=head_weight.device).reshape(-1)
    rows = head_weight.detach().index_select(0, idx)
    bias = head_bias.detach().index_select(0, idx) if head_bias is not None else None
    return rows, bias


def token_prm_scores(hidden: torch.Tensor, positions: torch.Tensor, lm_head_weight: torch.Tensor,
                     good_token_id: int, bad_token_id: int, *, lm_head_bias: torch.Tensor | None = None,
                     backend: str = "auto") -> torch.Tensor:
    """Token-logit PRM (Math-Shepherd): P(good) at each step-tag position, [P] float32.

    The softmax over the good and bad tokens' logits only, which equals the full-vocabulary
    softmax restricted to {good, bad} and renormalised.
    """
    rows, bias = candidate_rows(lm_head_weight, [good_token_id, bad_token_id], lm_head_bias)
    return prm_head_scores(hidden, positions, rows, bias, backend=backend)[:, 0]


def two_class_prm_scores(hidden: torch.Tensor, positions: torch.Tensor, head_weight: torch.Tensor,
                         head_bias: torch.Tensor | None = None, *, positive_class: int = 1,
                         pre: Callable[[torch.Tensor], torch.Tensor] | None = None,
                         backend: str = "auto") -> torch.Tensor:
    """Classification-head PRM (Qwen2.5-Math-PRM): P(positive_class) at each position, [P] float32.

    ``head_weight`` [2, d] / ``head_bias`` [2] are the head's final linear layer. If the head has
    layers before it (Qwen2.5-Math-PRM's ``score`` is Linear -> ReLU -> Linear), pass them as
    ``pre``: they run on the gathered rows only, then the fused op scores their output.
    """
    if head_weight.dim() != 2 or head_weight.shape[0] < 2:
        raise ValueError(f"two_class_prm_scores: head_weight must be [2, d], got {tuple(head_weight.shape)}")
    w = head_weight.detach()
    b = head_bias.detach() if head_bias is not None else None
    if pre is not None:
        _check_positions_range(positions, hidden.shape[0])
        hidden = pre(hidden.index_select(0, positions.long()))
        positions = torch.arange(hidden.shape[0], device=hidden.device)
    return prm_head_scores(hidden, positions, w, b, backend=backend)[:, positive_class]
