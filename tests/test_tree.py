"""BatchedTree: field shapes and dtypes, sentinels, capacity errors, growth and reset."""

from __future__ import annotations

import math

import pytest
import torch

from lrm_engine.core.tree import BatchedTree, TreeCapacityError

B, N, A = 3, 7, 5

# field -> (shape as a function of (B, N, A), dtype)
FIELDS = {
    "parent": (lambda b, n, a: (b, n), torch.int32),
    "action_from_parent": (lambda b, n, a: (b, n), torch.int32),
    "depth": (lambda b, n, a: (b, n), torch.int32),
    "children_index": (lambda b, n, a: (b, n, a), torch.int32),
    "children_prior": (lambda b, n, a: (b, n, a), torch.float32),
    "visit_count": (lambda b, n, a: (b, n), torch.int32),
    "value_sum": (lambda b, n, a: (b, n), torch.float32),
    "step_score": (lambda b, n, a: (b, n), torch.float32),
    "path_min": (lambda b, n, a: (b, n), torch.float32),
    "path_sum": (lambda b, n, a: (b, n), torch.float32),
    "path_sum_log": (lambda b, n, a: (b, n), torch.float32),
    "path_last": (lambda b, n, a: (b, n), torch.float32),
    "path_len": (lambda b, n, a: (b, n), torch.int32),
    "terminal": (lambda b, n, a: (b, n), torch.bool),
    "token_offset": (lambda b, n, a: (b, n), torch.int64),
    "token_length": (lambda b, n, a: (b, n), torch.int32),
    "num_nodes": (lambda b, n, a: (b,), torch.int32),
    "vvisit": (lambda b, n, a: (b, n), torch.int32),
    "rng_key": (lambda b, n, a: (b, n), torch.int64),
}


def test_sentinels():
    assert BatchedTree.ROOT == 0
    assert BatchedTree.NO_PARENT == -1
    assert BatchedTree.UNVISITED == -1
    assert BatchedTree.NO_ACTION == -1
    assert BatchedTree.INVALID_PRIOR < 0


def test_every_field_is_listed():
    tree = BatchedTree.empty(B, N, A)
    assert set(tree.tensors()) == set(FIELDS)


@pytest.mark.parametrize("b,n,a", [(B, N, A), (1, 1, 1), (1, 2, 1), (2, 3, 9)])
def test_shapes_dtypes_contiguity(b, n, a):
    tree = BatchedTree.empty(b, n, a)
    for name, (shape, dtype) in FIELDS.items():
        t = getattr(tree, name)
        assert tuple(t.shape) == shape(b, n, a), name
        assert t.dtype == dtype, name
        assert t.is_contiguous(), name
        assert t.device.type == "cpu", name
    assert tree.batch_size == b and tree.capacity == n and tree.num_actions == a


def test_empty_defaults():
    tree = BatchedTree.empty(B, N, A)
    assert (tree.parent == BatchedTree.NO_PARENT).all()
    assert (tree.action_from_parent == BatchedTree.NO_ACTION).all()
    assert (tree.depth == 0).all()
    assert (tree.children_index == BatchedTree.UNVISITED).all()
    # Root priors uniform 1/A, the other slots 0.
    assert torch.allclose(tree.children_prior[:, BatchedTree.ROOT], torch.full((B, A), 1.0 / A))
    assert (tree.children_prior[:, 1:] == 0).all()
    assert (tree.visit_count == 0).all()
    assert (tree.value_sum == 0).all()
    assert torch.isnan(tree.step_score).all()
    assert torch.isposinf(tree.path_min).all()
    assert (tree.path_sum == 0).all()
    assert (tree.path_sum_log == 0).all()
    assert torch.isnan(tree.path_last).all()
    assert (tree.path_len == 0).all()
    assert not tree.terminal.any()
    assert (tree.token_offset == 0).all()
    assert (tree.token_length == 0).all()
    assert (tree.num_nodes == 1).all()
    assert (tree.vvisit == 0).all()


def test_root_prior_given_and_checked():
    prior = torch.tensor([[0.5, 0.25, -1.0], [0.1, 0.2, 0.7]])
    tree = BatchedTree.empty(2, 4, 3, root_prior=prior)
    assert torch.equal(tree.children_prior[:, 0], prior)
    with pytest.raises(ValueError, match=r"\[B, A\]"):
        tree.set_root_prior(torch.zeros(3, 2))


@pytest.mark.parametrize("b,n,a", [(0, 2, 2), (2, 0, 2), (2, 2, 0)])
def test_empty_rejects_zero_sizes(b, n, a):
    with pytest.raises(ValueError):
        BatchedTree.empty(b, n, a)


def test_derived_values():
    tree = BatchedTree.empty(1, 4, 2)
    tree.children_index[0, 0] = torch.tensor([1, BatchedTree.UNVISITED], dtype=torch.int32)
    tree.parent[0, 1] = 0
    tree.visit_count[0, :2] = torch.tensor([4, 3], dtype=torch.int32)
    tree.value_sum[0, :2] = torch.tensor([2.0, -1.5])
    tree.num_nodes[0] = 2
    v = tree.node_value()
    assert v[0, 0].item() == 0.5 and v[0, 1].item() == -0.5 and v[0, 2].item() == 0.0
    cv = tree.children_visits()
    assert cv.dtype == torch.int32
    assert cv[0, 0].tolist() == [3, 0]
    assert tree.path_to_root(0, 1) == [1, 0]
    assert tree.path_to_root(0, 0) == [0]


def test_capacity_error_names_the_knob():
    tree = BatchedTree.empty(2, 4, 2)
    tree.num_nodes[1] = 3
    tree.ensure_capacity(1)  # 3 + 1 <= 4: fine
    with pytest.raises(TreeCapacityError, match=r"search\.max_nodes") as exc:
        tree.ensure_capacity(2)
    assert "5" in str(exc.value) and "4" in str(exc.value)  # needed / allocated
    assert isinstance(exc.value, RuntimeError)
    assert tree.capacity == 4  # nothing changed


def test_capacity_error_via_ops_expand():
    from lrm_engine import ops

    tree = BatchedTree.empty(1, 2, 2)
    leaf_node = torch.zeros(1, 2, dtype=torch.int32)
    leaf_action = torch.tensor([[0, 1]], dtype=torch.int32)
    with pytest.raises(TreeCapacityError, match=r"search\.max_nodes"):
        ops.expand(tree, leaf_node, leaf_action, torch.full((1, 2, 2), 0.5), backend="reference")
    assert tree.num_nodes.tolist() == [1]
    new = ops.expand(
        tree, leaf_node, leaf_action, torch.full((1, 2, 2), 0.5), grow=True, backend="reference"
    )
    assert new.tolist() == [[1, 2]]
    assert tree.capacity >= 3


def _populated(b=2, n=5, a=3) -> BatchedTree:
    g = torch.Generator().manual_seed(0)
    tree = BatchedTree.empty(b, n, a)
    for name, t in tree.tensors().items():
        if t.dtype == torch.bool:
            t.copy_(torch.rand(t.shape, generator=g) < 0.5)
        elif t.dtype.is_floating_point:
            t.copy_(torch.rand(t.shape, generator=g))
        else:
            t.copy_(torch.randint(-1, 9, t.shape, generator=g).to(t.dtype))
    tree.num_nodes.fill_(n)
    return tree


def test_grow_keeps_contents_and_fills_defaults():
    tree = _populated()
    before = {k: v.clone() for k, v in tree.tensors().items()}
    tree.grow(11)
    assert tree.capacity == 11
    fresh = BatchedTree.empty(2, 11, 3)
    for name, (shape, dtype) in FIELDS.items():
        t = getattr(tree, name)
        assert tuple(t.shape) == shape(2, 11, 3) and t.dtype == dtype and t.is_contiguous(), name
        if name == "num_nodes":
            assert torch.equal(t, before[name])
            continue
        assert torch.equal(t[:, :5], before[name]), name
        # New slots carry the defaults of an empty tree (ignoring the root's prior).
        assert torch.equal(t[:, 5:], getattr(fresh, name)[:, 5:]) or (
            t.dtype.is_floating_point
            and torch.equal(torch.isnan(t[:, 5:]), torch.isnan(getattr(fresh, name)[:, 5:]))
            and torch.equal(t[:, 5:].nan_to_num(0.0), getattr(fresh, name)[:, 5:].nan_to_num(0.0))
        ), name
    tree.grow(3)  # smaller: no-op
    assert tree.capacity == 11


def test_ensure_capacity_grows_by_doubling():
    tree = _populated(1, 3, 2)
    tree.num_nodes.fill_(3)
    tree.ensure_capacity(4, grow=True)  # need 7 -> 3, 6, 12
    assert tree.capacity == 12
    assert tree.num_nodes.tolist() == [3]


def test_reset_in_place():
    tree = _populated()
    ptrs = {k: v.data_ptr() for k, v in tree.tensors().items()}
    prior = torch.tensor([[0.2, 0.3, 0.5], [1.0, -1.0, 0.0]])
    tree.reset(prior)
    fresh = BatchedTree.empty(2, 5, 3, root_prior=prior)
    for name, t in tree.tensors().items():
        assert t.data_ptr() == ptrs[name], f"{name} was reallocated"
        assert torch.equal(t.nan_to_num(0.0) if t.dtype.is_floating_point else t,
                           getattr(fresh, name).nan_to_num(0.0)
                           if t.dtype.is_floating_point else getattr(fresh, name)), name
    tree.reset()
    assert torch.allclose(tree.children_prior[:, 0], torch.full((2, 3), 1 / 3))
    assert math.isinf(tree.path_min[0, 0].item())
