"""KVStore (byte budget, LRU, pinning), TokenArena, ComputeCounters, sampling warpers."""

from __future__ import annotations

import torch

from lrm_engine.core.tree import BatchedTree
from lrm_engine.models import ComputeCounters, KVSegment, KVStore, SamplingConfig, TokenArena
from lrm_engine.models.sampling import sample, warp


def seg(n_tokens, layers=2, heads=2, dim=4, vocab=None):
    ks = [torch.randn(heads, n_tokens, dim) for _ in range(layers)]
    vs = [torch.randn(heads, n_tokens, dim) for _ in range(layers)]
    return KVSegment(ks, vs, None if vocab is None else torch.zeros(vocab))


def test_segment_bytes_and_length():
    s = seg(3, vocab=10)
    assert s.length == 3
    assert s.nbytes == 2 * 2 * (2 * 3 * 4) * 4 + 10 * 4


def test_lru_eviction_within_budget():
    one = seg(2).nbytes
    st = KVStore(3 * one)
    for i in range(3):
        st.put(i, seg(2))
    assert len(st) == 3 and st.counters.evictions == 0
    st.get(0)  # 0 becomes most recently used; 1 is now the LRU
    st.put(3, seg(2))
    assert 1 not in st and {0, 2, 3} <= set(k for k in range(4) if k in st)
    assert st.counters.evictions == 1
    assert st.bytes_resident == 3 * one
    assert st.counters.bytes_resident_peak == 4 * one  # measured before the eviction


def test_pinned_segments_are_never_evicted():
    one = seg(2).nbytes
    st = KVStore(2 * one)
    st.put("a", seg(2), pin=True)
    st.put("b", seg(2), pin=True)
    st.put("c", seg(2))  # over budget: only "c" is evictable
    assert "a" in st and "b" in st and "c" not in st
    assert st.counters.budget_overruns == 0
    st.pin(["a"])  # pin counts nest
    st.put("d", seg(2), pin=True)  # pinned set alone exceeds the budget: the store runs over
    assert st.bytes_resident == 3 * one
    assert st.counters.budget_overruns == 1  # and says so (the search summary prints it)
    st.unpin(["a", "b", "d"])
    assert "a" in st and st.is_pinned("a")
    assert st.bytes_resident <= 2 * one
    st.unpin(["a"])
    assert not st.is_pinned("a")


def test_zero_budget_keeps_nothing_unpinned():
    st = KVStore(0)
    st.put(1, seg(1))
    assert len(st) == 0 and st.bytes_resident == 0 and st.counters.evictions == 1


def test_discard_is_not_an_eviction():
    st = KVStore.from_mb(1)
    st.put((0, 0, 0), seg(1))
    st.put((1, 0, 0), seg(1))
    st.discard_where(lambda k: k[0] == 0)
    assert (0, 0, 0) not in st and (1, 0, 0) in st and st.counters.evictions == 0


def test_counters_merge_and_print():
    a = ComputeCounters(tokens_computed=10, tokens_reused=30, bytes_resident_peak=100, evictions=1)
    b = ComputeCounters(tokens_computed=5, tokens_reused=5, bytes_resident_peak=300, evictions=2)
    c = a + b
    assert c.tokens_computed == 15 and c.tokens_reused == 35
    assert c.bytes_resident_peak == 300 and c.evictions == 3
    assert a.tokens_computed == 10  # merge is pure
    a.add_(b)
    assert a == c
    assert c.reuse_ratio == 50 / 15
    text = str(c)
    assert "computed 15" in text and "reused 35" in text and "evictions 3" in text
    assert c.as_dict()["tokens_reused"] == 35


def test_token_arena_grows_and_addresses_tree_nodes():
    ar = TokenArena(capacity=2)
    tree = BatchedTree.empty(1, 4, 2)
    tree.token_offset[0, 0] = ar.append([5, 6, 7])
    tree.token_length[0, 0] = 3
    tree.parent[0, 1] = 0
    tree.token_offset[0, 1] = ar.append(torch.tensor([8, 9]))
    tree.token_length[0, 1] = 2
    assert len(ar) == 5 and ar.nbytes == 40
    assert ar.node_tokens(tree, 0, 1).tolist() == [8, 9]
    assert ar.path_tokens(tree, 0, 1).tolist() == [5, 6, 7, 8, 9]


def test_sampling_warpers():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert sample(logits, SamplingConfig(greedy=True), None).tolist() == [3]
    w = warp(logits, SamplingConfig(top_k=2))
    assert torch.isinf(w[0, :2]).all() and torch.isfinite(w[0, 2:]).all()
    w = warp(logits, SamplingConfig(top_p=0.5))
    assert torch.isfinite(w[0, 3]) and torch.isinf(w[0, 0])
    g = torch.Generator().manual_seed(0)
    draws = sample(logits.repeat(200, 1), SamplingConfig(top_k=1), g)
    assert (draws == 3).all()
