"""Tree attention: the queries of new tokens attend over the KV segments of their ancestor nodes.

Layout (per layer)
    k_pool, v_pool [P, Hkv, D], contiguous. Node n's KV segment (one tree node's step tokens) is
    pool rows [seg_offset[n], seg_offset[n] + seg_len[n]); a segment may be empty (seg_len 0).
    q [Tq, Hq, D], Hq = Hkv * gs (GQA: query head h reads KV head h // gs).

Queries
    G query groups; group g is the q_len[g] new tokens of one branch, q rows
    [q_indptr[g], q_indptr[g + 1]). They are the LAST q_len[g] tokens of the segment of its query
    node (their K/V are already written there). Query j (0-based in its group) sees every token of
    every ancestor segment, and token t of its own segment iff t <= own_len - q_len + j (causal;
    q_len 1 is decoding, q_len > 1 a prefill of a step).

Output
    o [Tq, Hq, D] (q's dtype), lse [Tq, Hq] float32 (natural log of the softmax denominator,
    scores scaled by ``scale``, default 1/sqrt(D)).

The plan (`build_plan`, C++ with a pure-Python twin `build_plan_reference` that tests compare
against) holds two views of the same attention pattern:

* per group, CSR root -> leaf: kv_indptr [G + 1], kv_seg [nnz] (the reference reads these);
* segment-major, so that a segment shared by many branches is read ONCE for all of them
  (FastTree / DeFT style): every non-empty segment on the chain of a group with queries, in
  ascending node order, split into ceil(len / chunk_size) near-equal chunks (chunk_seg,
  chunk_start, chunk_len, chunk_pool_start); per chunk the CSR list of groups attending it
  (chunk_indptr, chunk_groups; an (chunk, group) pair is an "entry"); per entry its stacked query
  rows (row_indptr), and per row the q row (row_q) and how many chunk tokens it sees
  (row_limit: chunk_len, or fewer in the group's own segment); per group the entries whose
  partial results it merges by log-sum-exp, in chain order (merge_indptr, merge_entries).

Backends (argument ``backend``): "reference" (per group: concatenate its segments, explicit
softmax; the specification), "cpp" (lrm_engine._C, segment-major, fp32 / fp16 inputs, fp32
accumulation), "triton" (lrm_engine/ops/triton/tree_attention.py; on CPU only under
TRITON_INTERPRET=1), "auto" (cpp on CPU when built, else reference; triton on CUDA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from lrm_engine.ops.dispatch import BackendUnavailableError

BACKENDS = ("reference", "cpp", "triton")
PLAN_BACKENDS = ("reference", "cpp")
DEFAULT_CHUNK_SIZE = 512

# int32 tables of the plan, in the order the C++ builder returns them.
_PLAN_TABLES = (
    "q_indptr",
    "kv_indptr",
    "kv_seg",
    "chunk_seg",
    "chunk_start",
    "chunk_len",
    "chunk_indptr",
    "chunk_groups",
    "row_indptr",
    "row_q",
    "row_limit",
    "merge_indptr",
    "merge_entries",
)


def _ext() -> Any | None:
    """lrm_engine._C if it is built and has the tree-attention functions."""
    try:
        from lrm_engine import _C
    except ImportError:
        return None
    return _C if hasattr(_C, "tree_attention_fwd") and hasattr(_C, "tree_attention_plan") else None


def cpp_available() -> bool:
    return _ext() is not None


@dataclass
class TreeAttentionPlan:
    """The tables of one attention pattern (see the module docstring). All tensors on one device."""

    num_nodes: int
    num_groups: int
    chunk_size: int
    seg_offset: torch.Tensor  # [N] int64
    seg_len: torch.Tensor  # [N] int32
    query_nodes: torch.Tensor  # [G] int32
    q_indptr: torch.Tensor  # [G + 1]
    kv_indptr: torch.Tensor  # [G + 1]
    kv_seg: torch.Tensor  # [nnz]
    chunk_seg: torch.Tensor  # [C]
    chunk_start: torch.Tensor  # [C]
    chunk_len: torch.Tensor  # [C]
    chunk_indptr: torch.Tensor  # [C + 1]
    chunk_groups: torch.Tensor  # [E]
    row_indptr: torch.Tensor  # [E + 1]
    row_q: torch.Tensor  # [R]
    row_limit: torch.Tensor  # [R]
    merge_indptr: torch.Tensor  # [G + 1]
    merge_entries: torch.Tensor  # [E]
    chunk_pool_start: torch.Tensor  # [C] int64 = seg_offset[chunk_seg] + chunk_start
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def total_q(self) -> int:
        return int(self.q_indptr[-1])

    @property
    def num_chunks(self) -> int:
        return int(self.chunk_seg.numel())

    @property
    def num_rows(self) -> int:
        return int(self.row_q.numel())

    @property
    def device(self) -> torch.device:
        return self.q_indptr.device

    def to(self, device: torch.device | str) -> "TreeAttentionPlan":
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "_cache":
                continue
            kw[f.name] = v.to(device) if isinstance(v, torch.Tensor) else v
        return TreeAttentionPlan(**kw)

    def kv_tokens_read(self) -> int:
        """KV tokens (per head) the segment-major kernels read: each chunk once."""
        return int(self.chunk_len.sum())

    def kv_tokens_per_group(self) -> int:
        """KV tokens (per head) a per-branch kernel reads: every group its whole chain."""
        ql = self.q_indptr[1:] - self.q_indptr[:-1]
        tot = 0
        for g in range(self.num_groups):
            if int(ql[g]) == 0:
                continue
            segs = self.kv_seg[int(self.kv_indptr[g]) : int(self.kv_indptr[g + 1])].long()
            tot += int(self.seg_len[segs].sum())
        return tot


def _as_i32(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.numel() == 0:
        t = t.to(torch.int32)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer array, got {t.dtype}")
    return t.detach().to("cpu", torch.int32).contiguous().reshape(-1)


def _finish_plan(
    tables: dict[str, torch.Tensor],
    seg_len: torch.Tensor,
    seg_offset: Any,
    query_nodes: torch.Tensor,
    chunk_size: int,
) -> TreeAttentionPlan:
    N = int(seg_len.numel())
    if seg_offset is None:
        off = torch.zeros(N, dtype=torch.int64)
        if N > 1:
            off[1:] = torch.cumsum(seg_len.long(), 0)[:-1]
    else:
        off = torch.as_tensor(seg_offset).detach().to("cpu", torch.int64).contiguous().reshape(-1)
        if off.numel() != N:
            raise ValueError(f"seg_offset has {off.numel()} entries, expected {N}")
    cps = off[tables["chunk_seg"].long()] + tables["chunk_start"].long()
    return TreeAttentionPlan(
        num_nodes=N,
        num_groups=int(query_nodes.numel()),
        chunk_size=int(chunk_size),
        seg_offset=off,
        seg_len=seg_len.clone(),
        query_nodes=query_nodes.clone(),
        chunk_pool_start=cps.contiguous(),
        **tables,
    )


def _check_plan_inputs(parent: torch.Tensor, seg_len: torch.Tensor, qn: torch.Tensor, ql: torch.Tensor,
                       chunk_size: int) -> None:
    N = parent.numel()
    if seg_len.numel() != N:
        raise ValueError(f"parent has {N} nodes but seg_len has {seg_len.numel()}")
    if qn.numel() != ql.numel():
        raise ValueError(f"query_nodes has {qn.numel()} groups but q_len has {ql.numel()}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")


def build_plan_reference(
    parent: Any,
    seg_len: Any,
    query_nodes: Any,
    q_len: Any,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    seg_offset: Any = None,
) -> TreeAttentionPlan:
    """Pure-Python twin of the C++ plan builder (same tables, entry for entry)."""
    parent_t, seg_t = _as_i32(parent, "parent"), _as_i32(seg_len, "seg_len")
    qn_t, ql_t = _as_i32(query_nodes, "query_nodes"), _as_i32(q_len, "q_len")
    _check_plan_inputs(parent_t, seg_t, qn_t, ql_t, chunk_size)
    par, sl, qn, ql = parent_t.tolist(), seg_t.tolist(), qn_t.tolist(), ql_t.tolist()
    N, G = len(par), len(qn)
    for n in range(N):
        if not -1 <= par[n] < N:
            raise ValueError("lrm_engine tree_attention_plan: a parent index is outside [-1, N)")
        if sl[n] < 0:
            raise ValueError("lrm_engine tree_attention_plan: segment lengths must be >= 0")
    for g in range(G):
        if not 0 <= qn[g] < N:
            raise ValueError("lrm_engine tree_attention_plan: a query node is outside [0, N)")
        if not 0 <= ql[g] <= sl[qn[g]]:
            raise ValueError(
                "lrm_engine tree_attention_plan: q_len must satisfy 0 <= q_len <= seg_len[query_node]"
            )
    q_indptr, kv_indptr, kv_seg = [0], [0], []
    chains = []
    for g in range(G):
        q_indptr.append(q_indptr[-1] + ql[g])
        chain, n = [], qn[g]
        while n != -1:
            if len(chain) > N:
                raise ValueError("lrm_engine tree_attention_plan: the parent array has a cycle")
            chain.append(n)
            n = par[n]
        chain.reverse()
        chains.append(chain)
        kv_seg += chain
        kv_indptr.append(len(kv_seg))
    seg_groups: dict[int, list[int]] = {}
    for g in range(G):
        if ql[g] == 0:
            continue
        for s in chains[g]:
            if sl[s] > 0:
                seg_groups.setdefault(s, []).append(g)
    t: dict[str, list[int]] = {k: [] for k in _PLAN_TABLES}
    t["q_indptr"], t["kv_indptr"], t["kv_seg"] = q_indptr, kv_indptr, kv_seg
    t["chunk_indptr"], t["row_indptr"] = [0], [0]
    seg_chunks: dict[int, range] = {}
    for s in sorted(seg_groups):
        length = sl[s]
        nc = -(-length // chunk_size)
        c0 = len(t["chunk_seg"])
        seg_chunks[s] = range(c0, c0 + nc)
        for i in range(nc):
            start, stop = i * length // nc, (i + 1) * length // nc
            clen = stop - start
            t["chunk_seg"].append(s)
            t["chunk_start"].append(start)
            t["chunk_len"].append(clen)
            for g in seg_groups[s]:
                t["chunk_groups"].append(g)
                own = qn[g] == s
                for j in range(ql[g]):
                    t["row_q"].append(q_indptr[g] + j)
                    lim = clen
                    if own:
                        lim = max(0, min(clen, length - ql[g] + j + 1 - start))
                    t["row_limit"].append(lim)
                t["row_indptr"].append(len(t["row_q"]))
            t["chunk_indptr"].append(len(t["chunk_groups"]))
    t["merge_indptr"] = [0]
    for g in range(G):
        if ql[g] > 0:
            for s in chains[g]:
                for c in seg_chunks.get(s, ()):
                    lo, hi = t["chunk_indptr"][c], t["chunk_indptr"][c + 1]
                    t["merge_entries"].append(lo + t["chunk_groups"][lo:hi].index(g))
        t["merge_indptr"].append(len(t["merge_entries"]))
    tables = {k: torch.tensor(v, dtype=torch.int32) for k, v in t.items()}
    return _finish_plan(tables, seg_t, seg_offset, qn_t, chunk_size)


def build_plan(
    parent: Any,
    seg_len: Any,
    query_nodes: Any,
    q_len: Any,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    seg_offset: Any = None,
    backend: str = "auto",
) -> TreeAttentionPlan:
    """Build the tree-attention plan (on the CPU; move it with ``plan.to(device)``).

    parent [N] (parent[node] = -1 at roots), seg_len [N] (tokens of each node's segment),
    query_nodes [G] (one per group) and q_len [G]; seg_offset [N] (start row of each segment in
    the pool; default: segments packed in node order). backend: "auto" (C++ if built),
    "cpp" or "reference".
    """
    if backend == "auto":
        backend = "cpp" if cpp_available() else "reference"
    if backend == "reference":
        return build_plan_reference(parent, seg_len, query_nodes, q_len, chunk_size, seg_offset)
    if backend != "cpp":
        raise BackendUnavailableError(
            f"unknown plan backend {backend!r}; choose one of: auto, {', '.join(PLAN_BACKENDS)}"
        )
    ext = _ext()
    if ext is None:
        raise BackendUnavailableError(
            "the C++ tree-attention plan builder is not built (lrm_engine._C.tree_attention_plan); "
            "available: reference"
        )
    parent_t, seg_t = _as_i32(parent, "parent"), _as_i32(seg_len, "seg_len")
    qn_t, ql_t = _as_i32(query_nodes, "query_nodes"), _as_i32(q_len, "q_len")
    _check_plan_inputs(parent_t, seg_t, qn_t, ql_t, chunk_size)
    raw = ext.tree_attention_plan(
        parent_t.data_ptr(), seg_t.data_ptr(), parent_t.numel(), qn_t.data_ptr(), ql_t.data_ptr(),
        qn_t.numel(), int(chunk_size),
    )
    tables = {
        k: (torch.frombuffer(bytearray(raw[k]), dtype=torch.int32) if len(raw[k])
            else torch.zeros(0, dtype=torch.int32))
        for k in _PLAN_TABLES
    }
    return _finish_plan(tables, seg_t, seg_offset, qn_t, chunk_size)


# ------------------------------------------------------------------------------------ kernels
def _check_inputs(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, plan: TreeAttentionPlan
                  ) -> tuple[int, int, int, int]:
    if q.dim() != 3 or k_pool.dim() != 3 or v_pool.dim() != 3:
        raise ValueError("q must be [Tq, Hq, D] and k_pool, v_pool [P, Hkv, D]")
    Tq, Hq, D = q.shape
    P, Hkv, Dk = k_pool.shape
    if v_pool.shape != k_pool.shape:
        raise ValueError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} differ")
    if Dk != D:
        raise ValueError(f"head dim of q ({D}) and of the pool ({Dk}) differ")
    if Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    if Tq != plan.total_q:
        raise ValueError(f"q has {Tq} rows but the plan has {plan.total_q} queries")
    if not (q.device == k_pool.device == v_pool.device):
        raise ValueError("q, k_pool and v_pool must be on one device")
    return Tq, Hq, Hkv, D


def tree_attention_reference(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, plan: TreeAttentionPlan,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification: per group, concatenate its segments' K/V and run an explicit softmax."""
    Tq, Hq, Hkv, D = _check_inputs(q, k_pool, v_pool, plan)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    gs = Hq // Hkv
    dev = q.device
    o = torch.zeros(Tq, Hq, D, dtype=torch.float32, device=dev)
    lse = torch.full((Tq, Hq), -math.inf, dtype=torch.float32, device=dev)
    q_indptr, kv_indptr = plan.q_indptr.tolist(), plan.kv_indptr.tolist()
    kv_seg, seg_len, seg_off = plan.kv_seg.tolist(), plan.seg_len.tolist(), plan.seg_offset.tolist()
    for g in range(plan.num_groups):
        q0, q1 = q_indptr[g], q_indptr[g + 1]
        ql = q1 - q0
        if ql == 0:
            continue
        segs = kv_seg[kv_indptr[g] : kv_indptr[g + 1]]
        rows = [torch.arange(seg_off[s], seg_off[s] + seg_len[s]) for s in segs]
        idx = torch.cat(rows).to(dev)
        own = seg_len[segs[-1]]
        L = int(idx.numel())
        k = k_pool[idx].float().repeat_interleave(gs, dim=1)  # [L, Hq, D]
        v = v_pool[idx].float().repeat_interleave(gs, dim=1)
        qg = q[q0:q1].float()  # [ql, Hq, D]
        s = torch.einsum("qhd,khd->hqk", qg, k) * scale  # [Hq, ql, L]
        t = torch.arange(L, device=dev)
        own_t = t - (L - own)  # token index inside the own segment (negative = earlier segment)
        j = torch.arange(ql, device=dev)
        visible = own_t[None, :] <= (own - ql + j)[:, None]  # [ql, L]
        s = s.masked_fill(~visible[None], -math.inf)
        lg = torch.logsumexp(s, dim=-1)  # [Hq, ql]
        p = torch.exp(s - lg[..., None])
        o[q0:q1] = torch.einsum("hqk,khd->qhd", p, v)
        lse[q0:q1] = lg.transpose(0, 1)
    return o.to(q.dtype), lse


def tree_attention_cpp(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, plan: TreeAttentionPlan,
    scale: float | None = None, num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The C++ CPU kernel (segment-major, fp32 accumulation). num_threads: default torch's."""
    ext = _ext()
    if ext is None:
        raise BackendUnavailableError(
            "the C++ tree-attention kernel is not built (lrm_engine._C.tree_attention_fwd); "
            "build it with `pip install --no-build-isolation -e .`"
        )
    Tq, Hq, Hkv, D = _check_inputs(q, k_pool, v_pool, plan)
    if q.device.type != "cpu":
        raise ValueError("the cpp tree-attention backend needs CPU tensors")
    if plan.device.type != "cpu":
        plan = plan.to("cpu")
    dt = q.dtype
    if dt not in (torch.float32, torch.float16):
        q, k_pool, v_pool = q.float(), k_pool.float(), v_pool.float()
    elif not (k_pool.dtype == v_pool.dtype == dt):
        q, k_pool, v_pool = q.float(), k_pool.float(), v_pool.float()
    code = 0 if q.dtype == torch.float32 else 1
    q, k_pool, v_pool = q.contiguous(), k_pool.contiguous(), v_pool.contiguous()
    if plan.num_chunks:
        ends = plan.chunk_pool_start + plan.chunk_len.long()
        if int(ends.max()) > k_pool.shape[0] or int(plan.chunk_pool_start.min()) < 0:
            raise ValueError("the plan's segments reach outside the KV pool")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    nt = torch.get_num_threads() if num_threads is None else int(num_threads)
    o = torch.empty(Tq, Hq, D, dtype=torch.float32)
    lse = torch.empty(Tq, Hq, dtype=torch.float32)
    ext.tree_attention_fwd(
        q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), code, Tq, Hq, Hkv, D, plan.num_chunks,
        plan.chunk_pool_start.data_ptr(), plan.chunk_len.data_ptr(), plan.chunk_indptr.data_ptr(),
        plan.row_indptr.data_ptr(), plan.row_q.data_ptr(), plan.row_limit.data_ptr(),
        plan.chunk_groups.data_ptr(), scale, max(1, nt), o.data_ptr(), lse.data_ptr(),
    )
    return o.to(dt), lse


def tree_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    plan: TreeAttentionPlan,
    scale: float | None = None,
    backend: str = "auto",
    **kw: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over its groups' segments in (k_pool, v_pool). Returns (o, lse)."""
    if backend == "auto":
        if q.device.type == "cuda":
            backend = "triton"
        else:
            backend = "cpp" if cpp_available() else "reference"
    if backend == "reference":
        if plan.device != q.device:
            plan = plan.to(q.device)
        return tree_attention_reference(q, k_pool, v_pool, plan, scale)
    if backend == "cpp":
        return tree_attention_cpp(q, k_pool, v_pool, plan, scale, **kw)
    if backend == "triton":
        from lrm_engine.ops.triton import tree_attention as tta

        return tta.tree_attention_triton(q, k_pool, v_pool, plan, scale, **kw)
    raise BackendUnavailableError(
        f"unknown tree-attention backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}"
    )
