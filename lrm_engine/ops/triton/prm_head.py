"""Triton kernel of the PRM head op (semantics: `lrm_engine.ops.prm_head.prm_head_scores_reference`).

One program per block of ``BLOCK_P`` step positions: it loads the gathered hidden rows
(``hidden[positions[p]]``) chunk by chunk along d, multiplies them with the C candidate head rows
(padded to ``BLOCK_C`` >= 16 columns, so ``tl.dot`` has legal tile sizes) accumulating in float32,
adds the bias, and takes the softmax over the C real columns (padded columns are -inf). Only the C
rows of the head are read: no full-vocabulary logits exist at any point.

Runs compiled on a CUDA GPU, or on the CPU under ``TRITON_INTERPRET=1`` (set before this module is
imported; slow, for tests). float32 inputs use IEEE float32 products (no TF32), fp16/bf16 inputs
use the tensor cores with float32 accumulation.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

_FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def prm_head_kernel(
    h_ptr,  # [T, d] rows of `stride_h` elements (row contiguous), fp16 / bf16 / fp32
    stride_h,
    pos_ptr,  # [P] int64
    w_ptr,  # [C, d] contiguous, dtype = promote(hidden, weight)
    b_ptr,  # [C] float32 (unused unless HAS_BIAS)
    out_ptr,  # [P, C] float32
    P,
    C,
    D,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_p = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    rows = tl.load(pos_ptr + offs_p, mask=mask_p, other=0).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        h = tl.load(
            h_ptr + rows[:, None] * stride_h + offs_d[None, :],
            mask=mask_p[:, None] & mask_d[None, :],
            other=0.0,
        )
        # The head rows, transposed to [BLOCK_D, BLOCK_C] (columns >= C are zero padding).
        w = tl.load(
            w_ptr + offs_c[None, :] * D + offs_d[:, None],
            mask=mask_d[:, None] & mask_c[None, :],
            other=0.0,
        )
        h = h.to(w.dtype)
        if IEEE:
            acc = tl.dot(h, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(h, w, acc)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0)
        acc = acc + bias[None, :]
    acc = tl.where(mask_c[None, :], acc, float("-inf"))
    m = tl.max(acc, axis=1)
    e = tl.exp(acc - m[:, None])
    e = tl.where(mask_c[None, :], e, 0.0)
    s = tl.sum(e, axis=1)
    probs = e / s[:, None]
    tl.store(
        out_ptr + offs_p[:, None] * C + offs_c[None, :],
        probs,
        mask=mask_p[:, None] & mask_c[None, :],
    )


INTERPRETED = type(prm_head_kernel).__name__ == "InterpretedFunction"


def why_unavailable() -> str | None:
    """None if the kernel can run here, else why not."""
    if INTERPRETED or torch.cuda.is_available():
        return None
    return (
        "the triton PRM head kernel needs a CUDA GPU (none is visible to torch), or "
        "TRITON_INTERPRET=1 set before lrm_engine.ops.triton.prm_head is imported (CPU, slow)"
    )


def prm_head_scores_triton(
    hidden: torch.Tensor,
    positions: torch.Tensor,
    weight_rows: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """probs [P, C] float32 = softmax over C of hidden[positions] @ weight_rows.T + bias.

    Inputs are assumed validated by `lrm_engine.ops.prm_head` (shapes, same device); positions
    must lie in [0, T) (not re-checked on CUDA, to avoid a device sync).
    """
    why = why_unavailable()
    if why is not None:
        raise RuntimeError(why)
    dev = hidden.device
    if dev.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "the triton PRM head kernel cannot run on CPU tensors unless TRITON_INTERPRET=1 was set "
            "before lrm_engine.ops.triton.prm_head was imported; use backend='cpp' or 'reference'"
        )
    if hidden.dtype not in _FLOAT_TYPES:
        hidden = hidden.float()
    T, D = hidden.shape
    C = weight_rows.shape[0]
    P = positions.shape[0]
    out = torch.empty((P, C), dtype=torch.float32, device=dev)
    if P == 0:
        return out
    if D > 1 and hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    stride_h = hidden.stride(0) if T > 1 else D
    wdtype = torch.promote_types(hidden.dtype, weight_rows.dtype)
    if wdtype not in _FLOAT_TYPES:
        wdtype = torch.float32
    w = weight_rows.to(device=dev, dtype=wdtype).contiguous()
    pos = positions.to(device=dev, dtype=torch.int64).contiguous()
    b = bias.to(device=dev, dtype=torch.float32).contiguous() if bias is not None else out
    block_c = max(16, triton.next_power_of_2(C))
    if INTERPRETED:
        block_p, block_d = 16, 32
    else:
        block_p = 64 if P >= 4096 else 32 if P > 256 else 16
        block_d = 128 if block_c <= 64 else 64
    grid = (triton.cdiv(P, block_p),)
    ctx = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with ctx:
        prm_head_kernel[grid](
            hidden, stride_h, pos, w, b, out, P, C, D,
            HAS_BIAS=bias is not None,
            IEEE=wdtype == torch.float32,
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            BLOCK_D=block_d,
        )
    return out

