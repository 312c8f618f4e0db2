"""Direct checks of the C++ CPU kernels (lrm_engine._C through CppBackend) against the reference.

Quick, seeded, no hypothesis (tests/test_tree_ops.py holds the property-based suite over every
backend). Indices and integer fields must agree exactly, floats to the last bit except the
log-based path_sum_log (libm's logf vs torch's vectorised log may differ by one ulp).
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("lrm_engine._C", reason="the C++ extension lrm_engine._C is not built")

from lrm_engine.core.tree import BatchedTree  # noqa: E402
from lrm_engine.ops import reference as R  # noqa: E402
from lrm_engine.ops.cpp import CppBackend  # noqa: E402

CPP = CppBackend()


def assert_trees_equal(a: BatchedTree, b: BatchedTree) -> None:
    for name, x in a.tensors().items():
        y = getattr(b, name)
        if name == "path_sum_log":
            assert torch.allclose(x, y, rtol=1e-6, atol=1e-6, equal_nan=True), name
        elif x.dtype.is_floating_point:
            # bitwise, NaN == NaN
            assert torch.equal(x.view(torch.int32), y.view(torch.int32)) or torch.equal(
                torch.nan_to_num(x, nan=1234.5), torch.nan_to_num(y, nan=1234.5)
            ), (name, (x - y).abs().max())
        else:
            assert torch.equal(x, y), name


def random_root_prior(B: int, A: int, g: torch.Generator, invalid_frac: float = 0.2) -> torch.Tensor:
    p = torch.rand(B, A, generator=g)
    p = p / p.sum(1, keepdim=True)
    bad = torch.rand(B, A, generator=g) < invalid_frac
    bad[:, 0] = False  # at least one valid action at the root
    return torch.where(bad, torch.full_like(p, -1.0), p)


def run_loop(B, N, A, K, sims, rule, seed, discount=1.0, virtual_loss=1.0, terminal_frac=0.1,
             invalid_frac=0.2, scores=True, backend=CPP, device="cpu"):
    """An MCTS loop on random data: `backend` on `device` against the reference on CPU, compared
    after every op."""
    g = torch.Generator().manual_seed(seed)
    root = random_root_prior(B, A, g, invalid_frac)
    ta = BatchedTree.empty(B, N, A, device=device, root_prior=root.to(device))
    tb = BatchedTree.empty(B, N, A, root_prior=root)
    kw = dict(rule=rule, virtual_loss=virtual_loss)
    on = lambda x: None if x is None else x.to(device)  # noqa: E731

    def same_tree():
        host = BatchedTree(**{k: v.cpu() for k, v in ta.tensors().items()})
        assert_trees_equal(host, tb)

    for _ in range(sims):
        if int(tb.num_nodes.max()) + K > N:
            break
        ln_a, la_a = backend.select(ta, K, **kw)
        ln_b, la_b = R.select(tb, K, **kw)
        assert torch.equal(ln_a.cpu(), ln_b) and torch.equal(la_a.cpu(), la_b)
        assert ln_a.dtype == torch.int32 and la_a.dtype == torch.int32
        same_tree()  # select leaves the tree (and its vvisit workspace) unchanged
        assert int(ta.vvisit.abs().sum()) == 0
        prior = random_root_prior(B * K, A, g, invalid_frac).view(B, K, A)
        term = torch.rand(B, K, generator=g) < terminal_frac
        new_a = backend.expand(ta, ln_a, la_a, on(prior), on(term))
        new_b = R.expand(tb, ln_b, la_b, prior, term)
        assert torch.equal(new_a.cpu(), new_b)
        same_tree()
        values = torch.randn(B, K, generator=g)
        s = None
        if scores:
            s = torch.rand(B, K, generator=g) * 0.9 + 0.05
            s[torch.rand(B, K, generator=g) < 0.2] = math.nan
        backend.backup(ta, new_a, on(values), on(s), discount)
        R.backup(tb, new_b, values, s, discount)
        same_tree()
    return ta


@pytest.mark.parametrize("rule", ["puct", "uct"])
@pytest.mark.parametrize(
    "B,N,A,K,sims",
    [(1, 2, 1, 1, 3), (1, 40, 1, 1, 45), (3, 50, 3, 1, 60), (5, 64, 4, 3, 25), (7, 97, 5, 4, 30), (2, 33, 2, 5, 10)],
)
def test_mcts_loop_matches_reference(rule, B, N, A, K, sims):
    run_loop(B, N, A, K, sims, rule, seed=B * 100 + A * 10 + K, discount=0.97)


def test_mcts_loop_variants():
    run_loop(4, 80, 6, 3, 20, "puct", seed=1, virtual_loss=0.0)  # duplicates allowed
    run_loop(4, 80, 6, 3, 20, "puct", seed=2, virtual_loss=3.5, terminal_frac=0.5, invalid_frac=0.6)
    run_loop(3, 60, 8, 2, 25, "uct", seed=3, scores=False, discount=0.5)
    run_loop(2, 60, 3, 1, 50, "puct", seed=4, terminal_frac=0.0, invalid_frac=0.0)


def test_select_stops_at_terminal_and_invalid_roots():
    t = BatchedTree.empty(3, 8, 2)
    t.terminal[0, 0] = True
    t.children_prior[1, 0] = -1.0
    node, act = CPP.select(t, 2)
    rn, ra = R.select(t, 2)
    assert torch.equal(node, rn) and torch.equal(act, ra)
    assert node[:2].tolist() == [[0, 0], [0, 0]] and act[:2].tolist() == [[-1, -1], [-1, -1]]
    assert act[2].tolist() == [0, 1]  # virtual loss spreads the two leaves of tree 2
    assert int(t.vvisit.abs().sum()) == 0


def test_expand_existing_duplicate_and_skipped():
    t = BatchedTree.empty(2, 8, 3)
    r = BatchedTree.empty(2, 8, 3)
    ln = torch.tensor([[0, 0, -1, 0], [0, 0, 0, 0]], dtype=torch.int32)
    la = torch.tensor([[1, 1, 2, -1], [2, 0, 2, 1]], dtype=torch.int32)
    pr = torch.rand(2, 4, 3)
    term = torch.tensor([[True, False, False, False], [False, True, False, False]])
    a = CPP.expand(t, ln, la, pr, term)
    b = R.expand(r, ln, la, pr, term)
    assert torch.equal(a, b)
    assert a.tolist() == [[1, 1, -1, -1], [1, 2, 1, 3]]
    assert_trees_equal(t, r)
    # int64 / float64 inputs are converted like the reference converts them
    a = CPP.expand(t, ln.long(), la.long(), pr.double(), None)
    b = R.expand(r, ln.long(), la.long(), pr.double(), None)
    assert torch.equal(a, b)
    assert_trees_equal(t, r)


def test_expand_capacity_and_index_errors_leave_tree_unchanged():
    t = BatchedTree.empty(1, 3, 4)
    before = {k: v.clone() for k, v in t.tensors().items()}
    ln = torch.zeros(1, 3, dtype=torch.int32)
    la = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="node slots"):
        CPP.expand(t, ln, la, torch.rand(1, 3, 4))
    with pytest.raises(IndexError):
        CPP.expand(t, ln, torch.tensor([[0, 1, 4]], dtype=torch.int32), torch.rand(1, 3, 4))
    with pytest.raises(IndexError):
        CPP.backup(t, torch.tensor([[3]], dtype=torch.int32), torch.zeros(1, 1))
    for k, v in t.tensors().items():
        assert torch.equal(v, before[k]) or torch.allclose(v, before[k], equal_nan=True), k
    # Two leaves on the same (node, action) need one slot only: fits exactly.
    new = CPP.expand(t, ln[:, :2], torch.tensor([[1, 1]], dtype=torch.int32), torch.rand(1, 2, 4))
    assert new.tolist() == [[1, 1]]


def test_backup_path_aggregates_and_discount():
    t = BatchedTree.empty(1, 8, 2)
    r = BatchedTree.empty(1, 8, 2)
    for tree, be in ((t, CPP), (r, R)):
        n1 = be.expand(tree, torch.tensor([[0]], dtype=torch.int32), torch.tensor([[1]], dtype=torch.int32), torch.full((1, 1, 2), 0.5))
        be.backup(tree, n1, torch.tensor([[1.0]]), torch.tensor([[0.5]]), 0.9)
        n2 = be.expand(tree, n1, torch.tensor([[0]], dtype=torch.int32), torch.full((1, 1, 2), 0.5))
        be.backup(tree, n2, torch.tensor([[2.0]]), torch.tensor([[0.25]]), 0.9)
        be.backup(tree, torch.tensor([[0]], dtype=torch.int32), torch.tensor([[1.0]]), torch.tensor([[0.7]]), 0.9)
    assert_trees_equal(t, r)
    assert t.path_min[0, 2].item() == 0.25 and t.path_sum[0, 2].item() == 0.75 and t.path_len[0, 2].item() == 2
    assert t.visit_count[0, :3].tolist() == [3, 2, 1]
    assert t.value_sum[0, 0].item() == pytest.approx(1.0 + 0.9 + 2.0 * 0.81, rel=1e-6)
    assert math.isnan(t.step_score[0, 0].item())  # the root gets no step score


@pytest.mark.parametrize("k", [0, 1, 3, 7, 12])
def test_topk_ties_nan_invalid(k):
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 4, (6, 9), generator=g).float()  # many ties
    scores[0, 3] = math.nan
    scores[1] = math.nan
    scores[2, :4] = -math.inf
    valid = torch.rand(6, 9, generator=g) > 0.3
    for v in (None, valid):
        a = CPP.topk_per_tree(scores, k, v)
        b = R.topk_per_tree(scores, k, v)
        assert torch.equal(a[1], b[1]), (a, b)
        assert torch.equal(a[0], b[0])
        assert a[0].shape == (6, k) and a[1].dtype == torch.int32


def test_topk_large_rows_use_partial_sort():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 50, (5, 300), generator=g).float()
    scores[torch.rand(5, 300, generator=g) < 0.1] = math.nan
    valid = torch.rand(5, 300, generator=g) > 0.2
    for k in (5, 64, 300, 301):
        a = CPP.topk_per_tree(scores, k, valid)
        b = R.topk_per_tree(scores, k, valid)
        assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])


@pytest.mark.parametrize("op", ["min", "max", "sum", "mean", "last", "prod"])
def test_segment_reduce(op):
    g = torch.Generator().manual_seed(1)
    values = torch.rand(40, generator=g) + 0.5
    for offsets in ([0, 0, 3, 3, 10, 11, 40], [2, 5, 5, 9], [0], [7, 7], [0, 40]):
        off = torch.tensor(offsets, dtype=torch.int64)
        a = CPP.segment_reduce(values, off, op)
        b = R.segment_reduce(values, off, op)
        assert a.shape == b.shape and a.dtype == torch.float32
        assert torch.allclose(a, b, rtol=1e-6, atol=0, equal_nan=True), (offsets, a, b)
    with_nan = values.clone()
    with_nan[4] = math.nan
    off = torch.tensor([0, 3, 6, 40])
    assert torch.allclose(CPP.segment_reduce(with_nan, off, op), R.segment_reduce(with_nan, off, op), equal_nan=True)
    with pytest.raises(ValueError):
        CPP.segment_reduce(values, torch.tensor([0, 5, 3]), op)
    empty = CPP.segment_reduce(torch.zeros(0), torch.tensor([0, 0]), op)
    assert torch.allclose(empty, R.segment_reduce(torch.zeros(0), torch.tensor([0, 0]), op), equal_nan=True)


@pytest.mark.parametrize("unbiased", [True, False])
def test_group_normalize(unbiased):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, generator=g) * 3 + 1
    for offsets in ([0, 1, 1, 5, 17, 30], [3, 4, 10], [0], [0, 30], [5, 5]):
        off = torch.tensor(offsets, dtype=torch.int64)
        a = CPP.group_normalize(x, off, 1e-4, unbiased)
        b = R.group_normalize(x, off, 1e-4, unbiased)
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), (offsets, a, b)
    one = CPP.group_normalize(torch.tensor([5.0]), torch.tensor([0, 1]))
    assert one.tolist() == [0.0]  # a group of one: std 0, advantage 0


def test_wrong_dtypes_and_devices_are_refused():
    t = BatchedTree.empty(2, 8, 3)
    t.value_sum = t.value_sum.double()
    with pytest.raises(TypeError, match="value_sum"):
        CPP.select(t, 1)
    t = BatchedTree.empty(2, 8, 3)
    t.visit_count = torch.zeros(8, 2, dtype=torch.int32).t()  # [B, N] but not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        CPP.select(t, 1)
    with pytest.raises(ValueError, match="unknown selection rule"):
        CPP.select(BatchedTree.empty(1, 4, 2), 1, rule="gumbel")
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        with pytest.raises(TypeError, match="CPU"):
            CPP.topk_per_tree(torch.zeros(2, 3, device="cuda"), 1)


def test_grow_refreshes_the_cached_view():
    t = BatchedTree.empty(2, 4, 2)
    r = BatchedTree.empty(2, 4, 2)
    for _ in range(3):
        for tree, be in ((t, CPP), (r, R)):
            tree.ensure_capacity(1, grow=True)
            n, a = be.select(tree, 1)
            new = be.expand(tree, n, a, torch.full((2, 1, 2), 0.5))
            be.backup(tree, new, torch.ones(2, 1))
    t.grow(16)
    r.grow(16)
    for _ in range(6):
        for tree, be in ((t, CPP), (r, R)):
            n, a = be.select(tree, 2)
            new = be.expand(tree, n, a, torch.full((2, 2, 2), 0.5))
            be.backup(tree, new, torch.ones(2, 2))
    assert_trees_equal(t, r)


def _cuda_backend():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    try:
        from lrm_engine.ops.cuda import CudaBackend
    except ImportError as exc:
        pytest.skip(f"lrm_engine._C_cuda not built: {exc}")
    return CudaBackend()


@pytest.mark.gpu
@pytest.mark.parametrize("rule", ["puct", "uct"])
def test_cuda_kernels_match_reference(rule):  # pragma: no cover - needs a GPU
    be = _cuda_backend()
    run_loop(5, 64, 4, 3, 25, rule, seed=7, discount=0.97, backend=be, device="cuda")
    run_loop(3, 40, 1, 1, 45, rule, seed=8, backend=be, device="cuda")
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 4, (6, 9), generator=g).float()
    scores[1] = math.nan
    valid = torch.rand(6, 9, generator=g) > 0.3
    for k in (0, 3, 12):
        a = be.topk_per_tree(scores.cuda(), k, valid.cuda())
        b = R.topk_per_tree(scores, k, valid)
        assert torch.equal(a[1].cpu(), b[1]) and torch.equal(a[0].cpu(), b[0])
    values = torch.rand(40, generator=g) + 0.5
    off = torch.tensor([0, 0, 3, 3, 10, 11, 40])
    for op in ("min", "max", "sum", "mean", "last", "prod"):
        a = be.segment_reduce(values.cuda(), off.cuda(), op).cpu()
        assert torch.allclose(a, R.segment_reduce(values, off, op), rtol=1e-6, equal_nan=True), op
    off = torch.tensor([3, 4, 10, 30])
    for unbiased in (True, False):
        a = be.group_normalize(values.cuda(), off.cuda(), 1e-4, unbiased).cpu()
        assert torch.allclose(a, R.group_normalize(values, off, 1e-4, unbiased), rtol=1e-6, atol=1e-6)


def test_view_cache_one_entry_per_live_tree():
    import gc

    be = CppBackend()
    trees = [BatchedTree.empty(2, 8, 3) for _ in range(3)]
    for tree in trees:
        be.select(tree, 1)
    del tree
    assert len(be._views) == 3
    trees[0].grow(16)  # swaps the tensors: the entry is replaced, not added
    be.select(trees[0], 1)
    assert len(be._views) == 3
    del trees[1:]
    gc.collect()
    assert len(be._views) == 1


def test_vectorised_select_path_matches_reference():
    """A = 8, one leaf per tree, PUCT (the AVX2 eight-trees-interleaved descent on CPUs that have
    AVX2; the other shapes above take the scalar loop): the reference's trees bit for bit, with
    tree counts that are not multiples of eight, terminals and invalid actions."""
    run_loop(13, 70, 8, 1, 60, "puct", seed=11, discount=1.0)
    run_loop(9, 70, 8, 1, 40, "puct", seed=12, terminal_frac=0.4, invalid_frac=0.5, virtual_loss=2.0)
    run_loop(17, 50, 8, 1, 30, "puct", seed=13, terminal_frac=0.0, invalid_frac=0.0, discount=0.9)
