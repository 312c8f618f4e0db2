"""Tree attention: the plan builder (C++ vs its Python twin) and the kernels (C++, Triton under
the interpreter) vs the reference, on random trees with GQA, odd lengths, empty segments,
q_len 1 and > 1, deep and wide trees."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrm_engine.ops import tree_attention as ta
from lrm_engine.ops.dispatch import BackendUnavailableError

HAVE_CPP = ta.cpp_available()
needs_cpp = pytest.mark.skipif(not HAVE_CPP, reason="lrm_engine._C has no tree-attention kernels")


def random_tree(rng: random.Random, n_nodes: int, groups: int, max_len: int = 24, p_empty: float = 0.25,
                max_q: int = 6, deep: bool = False):
    """parent, seg_len, query_nodes, q_len of a random forest (several roots possible)."""
    parent = []
    for i in range(n_nodes):
        if i == 0 or rng.random() < 0.1:
            parent.append(-1)
        elif deep:
            parent.append(i - 1 if rng.random() < 0.8 else rng.randrange(i))
        else:
            parent.append(rng.randrange(i))
    seg_len = [0 if rng.random() < p_empty else rng.randint(1, max_len) for _ in range(n_nodes)]
    query_nodes, q_len = [], []
    for _ in range(groups):
        n = rng.randrange(n_nodes)
        ql = rng.choice([0, 1, 1, rng.randint(1, max_q)])
        seg_len[n] = max(seg_len[n], ql)
        query_nodes.append(n)
        q_len.append(ql)
    return parent, seg_len, query_nodes, q_len


def assert_plans_equal(a: ta.TreeAttentionPlan, b: ta.TreeAttentionPlan) -> None:
    for name in ta._PLAN_TABLES + ("chunk_pool_start", "seg_offset", "seg_len"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), (name, x, y)


def check_plan_invariants(plan: ta.TreeAttentionPlan, parent, seg_len, query_nodes, q_len) -> None:
    G = len(query_nodes)
    cs = plan.chunk_size
    ci, cg = plan.chunk_indptr.tolist(), plan.chunk_groups.tolist()
    cseg, cstart, clen = plan.chunk_seg.tolist(), plan.chunk_start.tolist(), plan.chunk_len.tolist()
    # Each attended non-empty segment is covered exactly once by consecutive chunks <= chunk_size.
    cover: dict[int, list[tuple[int, int]]] = {}
    for c, s in enumerate(cseg):
        assert 1 <= clen[c] <= cs
        cover.setdefault(s, []).append((cstart[c], clen[c]))
    for s, parts in cover.items():
        pos = 0
        for start, ln in parts:
            assert start == pos
            pos += ln
        assert pos == seg_len[s]
    # Chains root -> leaf and entries: (chunk, group) once each, exactly the group's chain.
    kv_i, kv_s = plan.kv_indptr.tolist(), plan.kv_seg.tolist()
    for g in range(G):
        chain = kv_s[kv_i[g] : kv_i[g + 1]]
        assert chain[-1] == query_nodes[g]
        for a, b in zip(chain, chain[1:]):
            assert parent[b] == a
        assert parent[chain[0]] == -1
        want = sorted(c for c, s in enumerate(cseg) if s in chain) if q_len[g] else []
        got = sorted(c for c in range(len(cseg)) if g in cg[ci[c] : ci[c + 1]])
        assert got == want
        mi = plan.merge_indptr.tolist()
        ents = plan.merge_entries[mi[g] : mi[g + 1]].tolist()
        assert sorted(ents) == sorted(ci[c] + cg[ci[c] : ci[c + 1]].index(g) for c in got)
    assert int(plan.q_indptr[-1]) == sum(q_len)


plan_cases = st.tuples(
    st.integers(0, 2**31 - 1),
    st.integers(1, 40),
    st.integers(0, 10),
    st.sampled_from([1, 2, 3, 5, 7, 16, 256]),
    st.booleans(),
)


@given(plan_cases)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_plan_builder_cpp_matches_python_twin(case):
    seed, n, g, cs, deep = case
    rng = random.Random(seed)
    parent, seg_len, qn, ql = random_tree(rng, n, g, deep=deep)
    ref = ta.build_plan_reference(parent, seg_len, qn, ql, cs)
    check_plan_invariants(ref, parent, seg_len, qn, ql)
    if HAVE_CPP:
        assert_plans_equal(ta.build_plan(parent, seg_len, qn, ql, cs, backend="cpp"), ref)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
def test_shared_segment_is_read_once(backend):
    # 16 branches under one 300-token prefix (chunked by 128), each with a 5-token step.
    B, pre, own = 16, 300, 5
    parent = [-1] + [0] * B
    seg_len = [pre] + [own] * B
    plan = ta.build_plan(parent, seg_len, list(range(1, B + 1)), [own] * B, 128, backend=backend)
    prefix_chunks = [c for c, s in enumerate(plan.chunk_seg.tolist()) if s == 0]
    assert len(prefix_chunks) == 3 and sum(plan.chunk_len[prefix_chunks].tolist()) == pre
    ci = plan.chunk_indptr.tolist()
    for c in prefix_chunks:
        assert plan.chunk_groups[ci[c] : ci[c + 1]].tolist() == list(range(B))
    assert plan.kv_tokens_read() == pre + B * own
    assert plan.kv_tokens_per_group() == B * (pre + own)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpp", marks=needs_cpp)])
@pytest.mark.parametrize(
    "args",
    [
        ([-1, 2, 1], [3, 3, 3], [0], [1]),  # cycle 1 <-> 2 is not reached from 0 -> fine below
        ([-1, 5], [3, 3], [1], [1]),  # parent out of range
        ([-1, 0], [3, 3], [2], [1]),  # query node out of range
        ([-1, 0], [3, 2], [1], [3]),  # q_len > seg_len
        ([-1, 0], [3, -1], [1], [0]),  # negative length
        ([1, 0], [3, 3], [1], [1]),  # cycle
    ],
)
def test_plan_builder_rejects_bad_input(backend, args):
    if args[0] == [-1, 2, 1]:
        ta.build_plan(*args, chunk_size=4, backend=backend)  # the unreachable cycle is harmless
        with pytest.raises(ValueError, match="cycle"):
            ta.build_plan(args[0], args[1], [1], [1], chunk_size=4, backend=backend)
        return
    with pytest.raises(ValueError):
        ta.build_plan(*args, chunk_size=4, backend=backend)


def test_reference_matches_sdpa_on_one_branch():
    # One chain of 3 segments: the reference equals plain SDPA with the causal rule.
    torch.manual_seed(0)
    Hq, Hkv, D = 4, 2, 16
    seg_len = [7, 0, 9]
    ql = 4
    plan = ta.build_plan_reference([-1, 0, 1], seg_len, [2], [ql], 5)
    P = sum(seg_len)
    k, v = torch.randn(P, Hkv, D), torch.randn(P, Hkv, D)
    q = torch.randn(ql, Hq, D)
    o, lse = ta.tree_attention(q, k, v, plan, backend="reference")
    mask = torch.ones(ql, P, dtype=torch.bool)
    mask[:, P - ql :] = torch.ones(ql, ql, dtype=torch.bool).tril()
    kk = k.transpose(0, 1).repeat_interleave(2, 0)
    vv = v.transpose(0, 1).repeat_interleave(2, 0)
    want = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, attn_mask=mask)
    torch.testing.assert_close(o, want.transpose(0, 1), rtol=1e-5, atol=1e-5)
    s = torch.einsum("qhd,khd->hqk", q, kk.transpose(0, 1)) / math.sqrt(D)
    torch.testing.assert_close(lse, torch.logsumexp(s.masked_fill(~mask, -math.inf), -1).T)


def permuted_offsets(seg_len, rng):
    """Segments laid out in the pool in a shuffled order with gaps."""
    order = list(range(len(seg_len)))
    rng.shuffle(order)
    off, pos = [0] * len(seg_len), 1
    for n in order:
        off[n] = pos
        pos += seg_len[n] + (1 if rng.random() < 0.3 else 0)
    return off, pos


def run_case(backend, seed, n, groups, cs, Hq, Hkv, D, dtype, deep=False, max_len=24, max_q=6, tol=None):
    rng = random.Random(seed)
    parent, seg_len, qn, ql = random_tree(rng, n, groups, max_len=max_len, max_q=max_q, deep=deep)
    off, P = permuted_offsets(seg_len, rng)
    plan = ta.build_plan(parent, seg_len, qn, ql, cs, seg_offset=off)
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(P, Hkv, D, generator=gen).to(dtype)
    v = torch.randn(P, Hkv, D, generator=gen).to(dtype)
    q = (torch.randn(plan.total_q, Hq, D, generator=gen) * 1.5).to(dtype)
    o_ref, lse_ref = ta.tree_attention(q.float(), k.float(), v.float(), plan, backend="reference")
    o, lse = ta.tree_attention(q, k, v, plan, backend=backend)
    assert o.dtype == dtype and o.shape == q.shape and lse.shape == q.shape[:2]
    assert lse.dtype == torch.float32
    assert torch.isfinite(o.float()).all() and torch.isfinite(lse).all()
    atol = tol if tol is not None else (2e-5 if dtype == torch.float32 else 2e-3)
    torch.testing.assert_close(o.float(), o_ref, rtol=atol, atol=atol)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-5, atol=1e-4)


@needs_cpp
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 24),
    st.integers(1, 8),
    st.sampled_from([1, 3, 8, 33, 256]),
    st.sampled_from([(6, 2, 16), (6, 2, 32), (4, 4, 24), (8, 1, 40)]),
    st.sampled_from([torch.float32, torch.float16]),
    st.booleans(),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_cpp_matches_reference(seed, n, groups, cs, heads, dtype, deep):
    Hq, Hkv, D = heads
    run_case("cpp", seed, n, groups, cs, Hq, Hkv, D, dtype, deep=deep)


@needs_cpp
@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_cpp_threads_and_wide_tree(num_threads):
    # Wide: 40 branches under a 70-token root; deep: a 30-node chain, prefill of a whole step.
    rng = random.Random(7)
    parent = [-1] + [0] * 40 + [0] + list(range(41, 70))
    seg_len = [70] + [rng.randint(0, 9) for _ in range(40)] + [rng.randint(0, 5) for _ in range(30)]
    qn = list(range(1, 41)) + [70]
    for n in qn:
        seg_len[n] = max(seg_len[n], 3)
    ql = [rng.choice([1, 2, 3]) for _ in range(40)] + [seg_len[70]]
    plan = ta.build_plan(parent, seg_len, qn, ql, 32)
    gen = torch.Generator().manual_seed(1)
    P = sum(seg_len)
    k, v = torch.randn(P, 2, 32, generator=gen), torch.randn(P, 2, 32, generator=gen)
    q = torch.randn(plan.total_q, 6, 32, generator=gen)
    o_ref, lse_ref = ta.tree_attention(q, k, v, plan, backend="reference")
    o, lse = ta.tree_attention(q, k, v, plan, backend="cpp", num_threads=num_threads)
    torch.testing.assert_close(o, o_ref, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "seed,n,groups,cs,heads,dtype,deep",
    [
        (1, 9, 4, 8, (6, 2, 16), torch.float32, False),
        (2, 12, 5, 16, (6, 2, 32), torch.float16, True),
        (3, 7, 3, 256, (6, 2, 32), torch.float32, True),
        (4, 10, 6, 5, (4, 1, 16), torch.float16, False),
    ],
)
def test_triton_matches_reference(seed, n, groups, cs, heads, dtype, deep):
    pytest.importorskip("triton")
    Hq, Hkv, D = heads
    run_case("triton", seed, n, groups, cs, Hq, Hkv, D, dtype, deep=deep)


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=needs_cpp), "triton"])
def test_prefill_whole_segment_has_rows_that_see_nothing_in_late_chunks(backend):
    # q_len == own_len: query 0 sees only token 0 of its own segment, so later chunks give it
    # lse = -inf partials; they must merge without NaN. An empty middle segment too.
    parent, seg_len, qn, ql = [-1, 0, 1], [5, 0, 21], [2], [21]
    plan = ta.build_plan(parent, seg_len, qn, ql, 4)
    assert int(plan.row_limit.min()) == 0
    gen = torch.Generator().manual_seed(3)
    P = sum(seg_len)
    k, v = torch.randn(P, 2, 16, generator=gen), torch.randn(P, 2, 16, generator=gen)
    q = torch.randn(21, 6, 16, generator=gen)
    o_ref, lse_ref = ta.tree_attention(q, k, v, plan, backend="reference")
    o, lse = ta.tree_attention(q, k, v, plan, backend=backend)
    torch.testing.assert_close(o, o_ref, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-5, atol=1e-4)


def test_backend_selection_and_errors():
    plan = ta.build_plan([-1], [3], [0], [2], 4)
    q, k, v = torch.randn(2, 2, 16), torch.randn(3, 1, 16), torch.randn(3, 1, 16)
    o, lse = ta.tree_attention(q, k, v, plan)  # auto
    o2, lse2 = ta.tree_attention(q, k, v, plan, backend="reference")
    torch.testing.assert_close(o, o2, rtol=2e-5, atol=2e-5)
    with pytest.raises(BackendUnavailableError, match="unknown"):
        ta.tree_attention(q, k, v, plan, backend="nope")
    with pytest.raises(ValueError, match="rows"):
        ta.tree_attention(q[:1], k, v, plan, backend="reference")
    with pytest.raises(ValueError, match="multiple"):
        ta.tree_attention(torch.randn(2, 3, 16), torch.randn(3, 2, 16), torch.randn(3, 2, 16), plan)
    if not HAVE_CPP:
        with pytest.raises(BackendUnavailableError, match="not built"):
            ta.build_plan([-1], [3], [0], [2], 4, backend="cpp")


@needs_cpp
@pytest.mark.parametrize("simd", ["generic", "avx2"])
def test_cpp_fallback_simd_paths(simd):
    # The kernel picks AVX-512 / AVX2 / generic code at load time; force the others.
    import os
    import subprocess
    import sys

    code = (
        "import random, torch\n"
        "from lrm_engine.ops import tree_attention as ta\n"
        "rng = random.Random(5)\n"
        "parent = [-1] + [0] * 6 + [1, 7, 8]\n"
        "seg_len = [37, 5, 0, 9, 3, 1, 2, 4, 6, 7]\n"
        "plan = ta.build_plan(parent, seg_len, [2, 3, 4, 9, 9], [0, 1, 3, 7, 2], 16)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "P = sum(seg_len)\n"
        "k, v = torch.randn(P, 2, 40, generator=g), torch.randn(P, 2, 40, generator=g)\n"
        "q = torch.randn(plan.total_q, 6, 40, generator=g)\n"
        "a = ta.tree_attention(q, k, v, plan, backend='reference')\n"
        "b = ta.tree_attention(q, k, v, plan, backend='cpp')\n"
        "torch.testing.assert_close(b[0], a[0], rtol=2e-5, atol=2e-5)\n"
        "torch.testing.assert_close(b[1], a[1], rtol=1e-5, atol=1e-4)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "LRM_TREE_ATTENTION_SIMD": simd}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_triton_kernels_compile_for_gpu():
    # The interpreter does not type-check like the compiler: compile for sm_90 (no GPU needed).
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("from lrm_engine.ops.triton.tree_attention import compile_for_gpu\n"
            "print('\\n'.join(compile_for_gpu()))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr:
        pytest.skip("Triton's bundled ptxas is missing")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(": ok") == 4
