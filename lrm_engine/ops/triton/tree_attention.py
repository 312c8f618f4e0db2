"""Triton kernels of tree attention (semantics: lrm_engine/ops/tree_attention.py).

Two kernels:

* ``_tree_attn_partial_kernel``: one program per (work item, KV head); a work item is a block of
  BLOCK_M stacked rows of one chunk. The chunk's queries -- every query of every group attending
  it, times the gs query heads of the KV head (row m -> partial row m // gs, head m % gs) -- sit in
  tl.dot's M dimension (FastTree / DeFT style), so the chunk's K/V tiles are loaded once for all
  of them. Online softmax over the chunk's tokens in BLOCK_N tiles; writes a partial (o, lse) per
  (partial row, head). A row that sees no token writes o = 0, lse = -inf (no NaN).
* ``_tree_attn_merge_kernel``: one program per query row; merges the partials of its group's
  entries (the plan's merge lists) by log-sum-exp; writes o (q's dtype) and lse (float32).

All tile sizes are >= 16 (the GPU compiler needs it for tl.dot). Whether these run compiled (GPU)
or interpreted (CPU, TRITON_INTERPRET=1) is fixed when the module is imported.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
LN2_C = tl.constexpr(LN2)  # a global a @triton.jit function may read


@triton.jit
def _tree_attn_partial_kernel(
    Q, K, V, PO, PL,
    work_chunk, work_blk,  # [W] int32
    chunk_pool_start,  # [C] int64
    chunk_len, chunk_row0, chunk_row1,  # [C] int32
    row_q, row_limit,  # [R] int32
    qk_scale,  # scale * log2(e)
    stride_qt, stride_qh, stride_kt, stride_kh,
    Hq,
    GS: tl.constexpr, D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
):
    w = tl.program_id(0)
    kvh = tl.program_id(1)
    c = tl.load(work_chunk + w)
    blk = tl.load(work_blk + w)
    base = tl.load(chunk_pool_start + c).to(tl.int64)
    L = tl.load(chunk_len + c)
    r0 = tl.load(chunk_row0 + c)
    r1 = tl.load(chunk_row1 + c)

    m_idx = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    r = r0 + m_idx // GS
    head = kvh * GS + m_idx % GS
    valid = r < r1
    qrow = tl.load(row_q + r, mask=valid, other=0).to(tl.int64)
    lim = tl.load(row_limit + r, mask=valid, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    q = tl.load(
        Q + qrow[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
        mask=valid[:, None] & dmask[None, :], other=0.0,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_end = tl.minimum(tl.max(lim, axis=0), L)
    for n0 in range(0, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < L
        kv_off = (base + offs_n)[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :]
        kvmask = nmask[:, None] & dmask[None, :]
        k = tl.load(K + kv_off, mask=kvmask, other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * qk_scale
        vis = offs_n[None, :] < lim[:, None]
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(V + kv_off, mask=kvmask, other=0.0)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    has = l_i > 0.0
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * LN2_C, float("-inf"))
    prow = r.to(tl.int64) * Hq + head
    tl.store(PO + prow[:, None] * D + offs_d[None, :], o, mask=valid[:, None] & dmask[None, :])
    tl.store(PL + prow, lse, mask=valid)


@triton.jit
def _tree_attn_merge_kernel(
    PO, PL, O, LSE,
    q_group, q_indptr, merge_indptr, merge_entries, row_indptr,
    stride_ot, stride_oh,
    Hq,
    D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    g = tl.load(q_group + t)
    j = t - tl.load(q_indptr + g)
    e0 = tl.load(merge_indptr + g)
    e1 = tl.load(merge_indptr + g + 1)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    hmask = offs_h < Hq
    dmask = offs_d < D
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for i in range(e0, e1):
        e = tl.load(merge_entries + i)
        pr = (tl.load(row_indptr + e) + j).to(tl.int64)
        lse_e = tl.load(PL + pr * Hq + offs_h, mask=hmask, other=float("-inf"))
        o_e = tl.load(PO + (pr * Hq + offs_h)[:, None] * D + offs_d[None, :],
                      mask=hmask[:, None] & dmask[None, :], other=0.0)
        m_new = tl.maximum(m, lse_e)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        a = tl.exp(m - m_safe)
        b = tl.exp(lse_e - m_safe)
        acc = acc * a[:, None] + o_e * b[:, None]
        l = l * a + b
        m = m_new
    has = l > 0.0
    o = acc / tl.where(has, l, 1.0)[:, None]
    m_fin = tl.where(m == float("-inf"), 0.0, m)
    lse = tl.where(has, m_fin + tl.log(tl.where(has, l, 1.0)), float("-inf"))
    tt = t.to(tl.int64)
    tl.store(O + tt * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=hmask[:, None] & dmask[None, :])
    tl.store(LSE + tt * Hq + offs_h, lse, mask=hmask)


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(x)))


def _work_list(plan, gs: int, block_m: int, device: torch.device):
    """(work_chunk, work_blk, chunk_row0, chunk_row1, q_group) for this plan, cached on it."""
    key = ("triton_work", gs, block_m, str(device))
    hit = plan._cache.get(key)
    if hit is not None:
        return hit
    ci = plan.chunk_indptr.to("cpu").long()
    ri = plan.row_indptr.to("cpu").long()
    row0 = ri[ci[:-1]]
    row1 = ri[ci[1:]]
    nblk = ((row1 - row0) * gs + block_m - 1) // block_m
    C = int(nblk.numel())
    work_chunk = torch.repeat_interleave(torch.arange(C), nblk)
    starts = torch.cumsum(nblk, 0) - nblk
    work_blk = torch.arange(int(nblk.sum())) - torch.repeat_interleave(starts, nblk)
    qi = plan.q_indptr.to("cpu").long()
    q_group = torch.repeat_interleave(torch.arange(plan.num_groups), qi[1:] - qi[:-1])
    out = tuple(
        x.to(device=device, dtype=torch.int32).contiguous()
        for x in (work_chunk, work_blk, row0, row1, q_group)
    )
    plan._cache[key] = out
    return out


def tree_attention_triton(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    plan,
    scale: float | None = None,
    block_m: int = 64,
    block_n: int = 32,
    ieee: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton tree attention; returns (o [Tq, Hq, D] in q's dtype, lse [Tq, Hq] float32).

    ieee: exact fp32 dot products for float32 inputs (default True; False allows TF32 on GPUs).
    """
    from lrm_engine.ops.tree_attention import _check_inputs

    Tq, Hq, Hkv, D = _check_inputs(q, k_pool, v_pool, plan)
    dev = q.device
    if plan.device != dev:
        key = ("plan_on", str(dev))
        moved = plan._cache.get(key)
        if moved is None:
            moved = plan.to(dev)
            plan._cache[key] = moved
        plan = moved
    gs = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if k_pool.dtype != q.dtype or v_pool.dtype != q.dtype:
        k_pool, v_pool = k_pool.to(q.dtype), v_pool.to(q.dtype)
    if k_pool.stride(-1) != 1 or v_pool.stride() != k_pool.stride():
        k_pool, v_pool = k_pool.contiguous(), v_pool.contiguous()
    if q.stride(-1) != 1:
        q = q.contiguous()
    if ieee is None:
        ieee = q.dtype == torch.float32
    block_m = _pow2(block_m)
    block_n = _pow2(block_n)
    block_d = _pow2(D)
    work_chunk, work_blk, row0, row1, q_group = _work_list(plan, gs, block_m, dev)
    R = plan.num_rows
    part_o = torch.empty(R, Hq, D, dtype=torch.float32, device=dev)
    part_l = torch.empty(R, Hq, dtype=torch.float32, device=dev)
    o = torch.empty(Tq, Hq, D, dtype=q.dtype, device=dev)
    lse = torch.empty(Tq, Hq, dtype=torch.float32, device=dev)
    W = int(work_chunk.numel())
    if W > 0:
        _tree_attn_partial_kernel[(W, Hkv)](
            q, k_pool, v_pool, part_o, part_l,
            work_chunk, work_blk, plan.chunk_pool_start, plan.chunk_len, row0, row1,
            plan.row_q, plan.row_limit,
            scale * LOG2E,
            q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1),
            Hq,
            GS=gs, D=D, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, IEEE=bool(ieee),
        )
    if Tq > 0:
        _tree_attn_merge_kernel[(Tq,)](
            part_o, part_l, o, lse,
            q_group, plan.q_indptr, plan.merge_indptr, plan.merge_entries, plan.row_indptr,
            o.stride(0), o.stride(1),
            Hq,
            D=D, BLOCK_H=_pow2(Hq, 1), BLOCK_D=block_d,
        )
    return o, lse


def compile_for_gpu(arch: int = 90, full: bool = False) -> list[str]:
    """Compile the kernels for a CUDA target without a GPU (Triton's real pipeline down to cubin),
    catching what the interpreter does not check. Needs TRITON_INTERPRET unset at import.

        python -c "from lrm_engine.ops.triton.tree_attention import compile_for_gpu as c; c(full=True)"
    """
    import os

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_for_gpu needs TRITON_INTERPRET unset (the kernels must be JIT functions)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    done = []

    def comp(fn, sig, consts):
        s = dict(sig)
        s.update({n: "constexpr" for n in consts})
        src = ASTSource(fn, s, constexprs={(fn.arg_names.index(n),): v for n, v in consts.items()})
        triton.compile(src, target=target, options=dict(num_warps=4))
        done.append(f"{fn.__name__} {consts}: ok")

    variants = [("fp32", True, 128), ("fp16", False, 40)]
    if full:
        variants += [("fp32", False, 128), ("fp16", False, 128), ("fp32", True, 16)]
    for dt, ieee, d in variants:
        comp(_tree_attn_partial_kernel, dict(
            Q="*" + dt, K="*" + dt, V="*" + dt, PO="*fp32", PL="*fp32", work_chunk="*i32",
            work_blk="*i32", chunk_pool_start="*i64", chunk_len="*i32", chunk_row0="*i32",
            chunk_row1="*i32", row_q="*i32", row_limit="*i32", qk_scale="fp32", stride_qt="i32",
            stride_qh="i32", stride_kt="i32", stride_kh="i32", Hq="i32"),
            dict(GS=6, D=d, BLOCK_M=64, BLOCK_N=32, BLOCK_D=_pow2(d), IEEE=ieee))
        comp(_tree_attn_merge_kernel, dict(
            PO="*fp32", PL="*fp32", O="*" + dt, LSE="*fp32", q_group="*i32", q_indptr="*i32",
            merge_indptr="*i32", merge_entries="*i32", row_indptr="*i32", stride_ot="i32",
            stride_oh="i32", Hq="i32"), dict(D=d, BLOCK_H=16, BLOCK_D=_pow2(d)))
    return done
