"""Triton kernels of the six tree ops (semantics: lrm_engine/ops/reference.py).

Whether these run compiled (GPU) or under the interpreter (CPU, ``TRITON_INTERPRET=1``) is fixed
when this module is imported: ``triton.jit`` reads the variable at decoration time.

Layout notes shared by the kernels:

* The tree kernels run one program per tree and walk the K leaves / backups of that tree one
  after another, in k order, exactly like the reference. They run with ``num_warps=1`` and put a
  ``tl.debug_barrier()`` after every global store that a later step of the same program reads
  back (Triton gives no read-after-write ordering of global memory between the threads of a
  program without one).
* Offsets into [B, N] / [B, N, A] fields are int64 (``b`` is promoted once), so big batches do
  not overflow int32 arithmetic.
* Floating-point constants that are not exact in float32 (c1, c2, uct_c, virtual loss, the PUCT
  1e-8 floor) reach `select` through a small float64 tensor, not as scalar arguments (Triton
  passes Python floats as float32).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Segment ops, by the integer code the kernels take.
SEG_MIN, SEG_MAX, SEG_SUM, SEG_MEAN, SEG_LAST, SEG_PROD = range(6)
SEG_CODES = {"min": SEG_MIN, "max": SEG_MAX, "sum": SEG_SUM, "mean": SEG_MEAN, "last": SEG_LAST, "prod": SEG_PROD}


# --------------------------------------------------------------------------------------- select
@triton.jit
def select_kernel(
    children_index_ptr,  # [B, N, A] int32
    children_prior_ptr,  # [B, N, A] float32
    visit_count_ptr,  # [B, N] int32
    value_sum_ptr,  # [B, N] float32
    terminal_ptr,  # [B, N] uint8 (bool viewed as bytes)
    parent_ptr,  # [B, N] int32
    vvisit_ptr,  # [B, N] int32 workspace, zero on entry and on exit
    out_node_ptr,  # [B, K] int32
    out_action_ptr,  # [B, K] int32
    params_ptr,  # [5] float64: c1, c2, uct_c, virtual_loss, qhat floor (1e-8)
    N,
    A,
    K,
    IS_UCT: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    base_n = b * N
    base_na = b * N * A
    base_k = b * K
    c1 = tl.load(params_ptr + 0)
    c2 = tl.load(params_ptr + 1)
    uct_c = tl.load(params_ptr + 2)
    vl = tl.load(params_ptr + 3)
    floor = tl.load(params_ptr + 4)
    acts = tl.arange(0, BLOCK_A)
    amask = acts < A
    js = tl.arange(0, BLOCK_J)

    for k in range(K):
        node = tl.zeros((), dtype=tl.int32)
        act = tl.full((), -1, dtype=tl.int32)
        go = tl.full((), 1, dtype=tl.int32)
        while go != 0:
            row = base_na + node.to(tl.int64) * A
            prior = tl.load(children_prior_ptr + row + acts, mask=amask, other=-1.0).to(tl.float64)
            valid = (prior >= 0) & amask
            child = tl.load(children_index_ptr + row + acts, mask=amask, other=-1)
            expanded = child >= 0
            cidx = base_n + tl.maximum(child, 0).to(tl.int64)
            cm = amask & expanded
            c_vv = tl.load(vvisit_ptr + cidx, mask=cm, other=0).to(tl.float64)
            c_vis = tl.load(visit_count_ptr + cidx, mask=cm, other=0).to(tl.float64) + c_vv
            c_sum = tl.load(value_sum_ptr + cidx, mask=cm, other=0.0).to(tl.float64) - vl * c_vv
            # Pending (node, action) pairs among the earlier leaves of this call. Only a node on
            # an earlier leaf's path (vvisit > 0) can be the node of an earlier leaf, and only
            # valid unexpanded actions can use the count: skip the scan otherwise.
            n_vv_i = tl.load(vvisit_ptr + base_n + node)
            pend = tl.zeros((BLOCK_A,), dtype=tl.int32)
            n_open = tl.sum((valid & ~expanded).to(tl.int32), axis=0)
            if (n_vv_i > 0) & (n_open > 0):
                for j0 in range(0, k, BLOCK_J):
                    jj = j0 + js
                    jm = jj < k
                    ln = tl.load(out_node_ptr + base_k + jj, mask=jm, other=-2)
                    la = tl.load(out_action_ptr + base_k + jj, mask=jm, other=-2)
                    hit = (ln[:, None] == node) & (la[:, None] == acts[None, :])
                    pend += tl.sum(hit.to(tl.int32), axis=0)
            pend_f = pend.to(tl.float64)
            c_vis = tl.where(expanded, c_vis, pend_f)
            c_sum = tl.where(expanded, c_sum, -vl * pend_f)
            n_vv = n_vv_i.to(tl.float64)
            n_vis = tl.load(visit_count_ptr + base_n + node).to(tl.float64) + n_vv
            n_sum = tl.load(value_sum_ptr + base_n + node).to(tl.float64) - vl * n_vv
            visited = c_vis > 0
            q = tl.where(visited, c_sum / tl.where(visited, c_vis, 1.0), 0.0)
            if IS_UCT:
                explore = uct_c * tl.sqrt(
                    tl.log(tl.maximum(n_vis, 1.0)) / tl.where(visited, c_vis, 1.0)
                )
                score = tl.where(visited, q + explore, float("inf"))
            else:
                v_n = tl.where(n_vis > 0, n_sum / tl.maximum(n_vis, 1.0), 0.0)
                vq = visited & valid
                lo = tl.minimum(v_n, tl.min(tl.where(vq, q, float("inf")), axis=0))
                hi = tl.maximum(v_n, tl.max(tl.where(vq, q, -float("inf")), axis=0))
                qhat = tl.where(visited, (q - lo) / tl.maximum(hi - lo, floor), 0.0)
                pb_c = c1 + tl.log((n_vis + c2 + 1.0) / c2)
                score = qhat + prior * tl.sqrt(n_vis) * pb_c / (c_vis + 1.0)
            score = tl.where(valid, score, -float("inf"))
            term = tl.load(terminal_ptr + base_n + node)
            n_valid = tl.sum(valid.to(tl.int32), axis=0)
            stop = (term != 0) | (n_valid == 0)
            best = tl.argmax(score, axis=0, tie_break_left=True).to(tl.int32)
            nxt = tl.sum(tl.where(acts == best, child, 0), axis=0)
            is_leaf = (~stop) & (nxt < 0)
            act = tl.where(is_leaf, best, act)
            go = tl.where(stop | is_leaf, 0, 1).to(tl.int32)
            node = tl.where(stop | is_leaf, node, nxt)
        tl.store(out_node_ptr + base_k + k, node)
        tl.store(out_action_ptr + base_k + k, act)
        # Virtual loss on the path leaf -> root.
        n = node
        while n >= 0:
            p = base_n + n.to(tl.int64)
            vv = tl.load(vvisit_ptr + p)
            tl.debug_barrier()
            tl.store(vvisit_ptr + p, vv + 1)
            n = tl.load(parent_ptr + p)
        tl.debug_barrier()

    # Leave the workspace zero: clear every node on the recorded paths.
    for k in range(K):
        n = tl.load(out_node_ptr + base_k + k)
        while n >= 0:
            p = base_n + n.to(tl.int64)
            tl.store(vvisit_ptr + p, 0)
            n = tl.load(parent_ptr + p)


# --------------------------------------------------------------------------------------- expand
@triton.jit
def expand_kernel(
    parent_ptr,  # [B, N] int32
    action_ptr,  # [B, N] int32 action_from_parent
    depth_ptr,  # [B, N] int32
    children_index_ptr,  # [B, N, A] int32
    children_prior_ptr,  # [B, N, A] float32
    visit_count_ptr,  # [B, N] int32
    value_sum_ptr,  # [B, N] float32
    terminal_ptr,  # [B, N] uint8
    num_nodes_ptr,  # [B] int32
    leaf_node_ptr,  # [B, K] int32
    leaf_action_ptr,  # [B, K] int32
    child_prior_ptr,  # [B, K, A] float32
    new_terminal_ptr,  # [B, K] uint8 (ignored unless HAS_TERMINAL)
    out_ptr,  # [B, K] int32
    overflow_ptr,  # [1] int32, set to 1 if a tree ran out of slots
    N,
    A,
    K,
    HAS_TERMINAL: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    base_n = b * N
    base_na = b * N * A
    base_k = b * K
    acts = tl.arange(0, BLOCK_A)
    amask = acts < A
    for k in range(K):
        n = tl.load(leaf_node_ptr + base_k + k)
        a = tl.load(leaf_action_ptr + base_k + k)
        # Out-of-range ids are treated like negative ones (never read or write out of bounds).
        ok = (n >= 0) & (a >= 0) & (n < N) & (a < A)
        nc = tl.where(ok, n, 0).to(tl.int64)
        ac = tl.where(ok, a, 0).to(tl.int64)
        slot = children_index_ptr + base_na + nc * A + ac
        existing = tl.load(slot)
        c = tl.load(num_nodes_ptr + b)
        want = ok & (existing < 0)
        # Out of slots: write nothing, flag it (the host raises TreeCapacityError).
        tl.store(overflow_ptr, 1, mask=want & (c >= N))
        fresh = want & (c < N)
        cl = c.to(tl.int64)
        tl.debug_barrier()
        tl.store(parent_ptr + base_n + cl, n, mask=fresh)
        tl.store(action_ptr + base_n + cl, a, mask=fresh)
        d = tl.load(depth_ptr + base_n + nc)
        tl.store(depth_ptr + base_n + cl, d + 1, mask=fresh)
        tl.store(slot, c, mask=fresh)
        crow = base_na + cl * A + acts
        tl.store(children_index_ptr + crow, tl.full((BLOCK_A,), -1, tl.int32), mask=amask & fresh)
        cp = tl.load(child_prior_ptr + (base_k + k) * A + acts, mask=amask, other=0.0)
        tl.store(children_prior_ptr + crow, cp, mask=amask & fresh)
        tl.store(visit_count_ptr + base_n + cl, 0, mask=fresh)
        tl.store(value_sum_ptr + base_n + cl, 0.0, mask=fresh)
        if HAS_TERMINAL:
            t = (tl.load(new_terminal_ptr + base_k + k) != 0).to(tl.uint8)
        else:
            t = tl.zeros((), dtype=tl.uint8)
        tl.store(terminal_ptr + base_n + cl, t, mask=fresh)
        tl.store(num_nodes_ptr + b, c + 1, mask=fresh)
        res = tl.where(fresh, c, tl.where(ok, existing, -1))
        tl.store(out_ptr + base_k + k, res)
        tl.debug_barrier()


# --------------------------------------------------------------------------------------- backup
@triton.jit
def backup_kernel(
    parent_ptr,  # [B, N] int32
    visit_count_ptr,  # [B, N] int32
    value_sum_ptr,  # [B, N] float32
    step_score_ptr,  # [B, N] float32
    path_min_ptr,  # [B, N] float32
    path_sum_ptr,  # [B, N] float32
    path_sum_log_ptr,  # [B, N] float32
    path_last_ptr,  # [B, N] float32
    path_len_ptr,  # [B, N] int32
    nodes_ptr,  # [B, K] int32
    values_ptr,  # [B, K] float32
    scores_ptr,  # [B, K] float32 (ignored unless HAS_SCORES)
    discount,  # float32
    N,
    K,
    HAS_SCORES: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    base_n = b * N
    base_k = b * K
    for k in range(K):
        m = tl.load(nodes_ptr + base_k + k)
        ok = (m >= 0) & (m < N)  # out-of-range ids are skipped like negative ones
        mc = base_n + tl.maximum(m, 0).to(tl.int64)
        if HAS_SCORES:
            s = tl.load(scores_ptr + base_k + k)
            par = tl.load(parent_ptr + mc)
            has = ok & (s == s) & (par >= 0)
            pc = base_n + tl.maximum(par, 0).to(tl.int64)
            p_min = tl.load(path_min_ptr + pc)
            p_sum = tl.load(path_sum_ptr + pc)
            p_log = tl.load(path_sum_log_ptr + pc)
            p_len = tl.load(path_len_ptr + pc)
            tl.debug_barrier()
            tl.store(step_score_ptr + mc, s, mask=has)
            tl.store(path_min_ptr + mc, tl.minimum(p_min, s), mask=has)
            tl.store(path_sum_ptr + mc, p_sum + s, mask=has)
            tl.store(path_sum_log_ptr + mc, p_log + tl.log(s), mask=has)
            tl.store(path_last_ptr + mc, s, mask=has)
            tl.store(path_len_ptr + mc, p_len + 1, mask=has)
        v = tl.load(values_ptr + base_k + k)
        n = tl.where(ok, m, -1)
        while n >= 0:
            p = base_n + n.to(tl.int64)
            vc = tl.load(visit_count_ptr + p)
            vs = tl.load(value_sum_ptr + p)
            tl.debug_barrier()
            tl.store(visit_count_ptr + p, vc + 1)
            tl.store(value_sum_ptr + p, vs + v)
            v = v * discount
            n = tl.load(parent_ptr + p)
        tl.debug_barrier()


# --------------------------------------------------------------------------------------- topk
@triton.jit
def topk_kernel(
    scores_ptr,  # [B, M] float32
    valid_ptr,  # [B, M] uint8 (ignored unless HAS_VALID)
    out_v_ptr,  # [B, k] float32
    out_i_ptr,  # [B, k] int32
    M,
    KOUT,
    HAS_VALID: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Round r picks the best valid entry strictly after round r-1's pick in the total order
    # (score descending, index ascending): streaming, no per-row state but the previous pick.
    row = tl.program_id(0).to(tl.int64)
    base = row * M
    offs = tl.arange(0, BLOCK)
    big = 2147483647
    prev_v = tl.full((), float("inf"), tl.float32)
    prev_i = tl.full((), -1, tl.int32)
    for r in range(KOUT):
        best_v = tl.full((), -float("inf"), tl.float32)
        best_i = tl.full((), big, tl.int32)
        for start in range(0, M, BLOCK):
            idx = start + offs
            inb = idx < M
            x = tl.load(scores_ptr + base + idx, mask=inb, other=0.0)
            ok = inb & (x == x)
            if HAS_VALID:
                ok = ok & (tl.load(valid_ptr + base + idx, mask=inb, other=0) != 0)
            after = (x < prev_v) | ((x == prev_v) & (idx > prev_i))
            cand = ok & after
            bv = tl.max(tl.where(cand, x, -float("inf")), axis=0)
            bi = tl.min(tl.where(cand & (x == bv), idx, big), axis=0)
            # Blocks come in index order: an equal score keeps the earlier (lower) index.
            better = (bi != big) & ((best_i == big) | (bv > best_v))
            best_v = tl.where(better, bv, best_v)
            best_i = tl.where(better, bi, best_i)
        found = best_i != big
        tl.store(out_v_ptr + row * KOUT + r, tl.where(found, best_v, -float("inf")))
        tl.store(out_i_ptr + row * KOUT + r, tl.where(found, best_i, -1))
        prev_v = tl.where(found, best_v, prev_v)
        prev_i = tl.where(found, best_i, prev_i)


# --------------------------------------------------------------------------------------- segments
@triton.jit
def segment_reduce_kernel(
    values_ptr,  # [T] float32
    offsets_ptr,  # [S + 1] int64
    out_ptr,  # [S] float32
    OP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    s = tl.program_id(0)
    lo = tl.load(offsets_ptr + s)
    hi = tl.load(offsets_ptr + s + 1)
    offs = tl.arange(0, BLOCK)
    if OP == 4:  # last
        res = tl.load(values_ptr + tl.maximum(hi - 1, 0), mask=hi > lo, other=float("nan"))
    else:
        if OP == 0:
            acc = tl.full((BLOCK,), float("inf"), tl.float32)
        elif OP == 1:
            acc = tl.full((BLOCK,), -float("inf"), tl.float32)
        elif OP == 5:
            acc = tl.full((BLOCK,), 1.0, tl.float32)
        else:
            acc = tl.zeros((BLOCK,), tl.float32)
        nans = tl.zeros((BLOCK,), tl.int32)
        for start in range(lo, hi, BLOCK):
            idx = start + offs
            m = idx < hi
            if OP == 0:
                x = tl.load(values_ptr + idx, mask=m, other=float("inf"))
                acc = tl.minimum(acc, x)
                nans += (x != x).to(tl.int32)
            elif OP == 1:
                x = tl.load(values_ptr + idx, mask=m, other=-float("inf"))
                acc = tl.maximum(acc, x)
                nans += (x != x).to(tl.int32)
            elif OP == 5:
                x = tl.load(values_ptr + idx, mask=m, other=1.0)
                acc = acc * x
            else:
                x = tl.load(values_ptr + idx, mask=m, other=0.0)
                acc = acc + x
        if OP == 0:
            res = tl.min(acc, axis=0)
            res = tl.where(tl.sum(nans, axis=0) > 0, float("nan"), res)
        elif OP == 1:
            res = tl.max(acc, axis=0)
            res = tl.where(tl.sum(nans, axis=0) > 0, float("nan"), res)
        elif OP == 5:
            res = tl.reduce(acc, 0, _mul_combine)
        elif OP == 3:
            n = hi - lo
            res = tl.where(n > 0, tl.sum(acc, axis=0) / tl.maximum(n, 1).to(tl.float32), float("nan"))
        else:
            res = tl.sum(acc, axis=0)
    tl.store(out_ptr + s, res)


@triton.jit
def _mul_combine(a, b):
    return a * b


@triton.jit
def group_normalize_kernel(
    x_ptr,  # [T] float32
    offsets_ptr,  # [G + 1] int64
    out_ptr,  # [T] float32
    eps,  # float32
    UNBIASED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    g = tl.program_id(0)
    lo = tl.load(offsets_ptr + g)
    hi = tl.load(offsets_ptr + g + 1)
    offs = tl.arange(0, BLOCK)
    n = hi - lo
    nf = tl.maximum(n, 1).to(tl.float32)
    acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(lo, hi, BLOCK):
        idx = start + offs
        acc += tl.load(x_ptr + idx, mask=idx < hi, other=0.0)
    mean = tl.sum(acc, axis=0) / nf
    acc2 = tl.zeros((BLOCK,), tl.float32)
    for start in range(lo, hi, BLOCK):
        idx = start + offs
        m = idx < hi
        d = tl.load(x_ptr + idx, mask=m, other=0.0) - mean
        acc2 += tl.where(m, d * d, 0.0)
    ss = tl.sum(acc2, axis=0)
    if UNBIASED:
        denom = tl.maximum(n - 1, 1).to(tl.float32)
    else:
        denom = nf
    std = tl.where(n > 1, tl.sqrt(ss / denom), 0.0)
    inv = std + eps
    for start in range(lo, hi, BLOCK):
        idx = start + offs
        m = idx < hi
        x = tl.load(x_ptr + idx, mask=m, other=0.0)
        tl.store(out_ptr + idx, (x - mean) / inv, mask=m)
