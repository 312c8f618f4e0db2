"""Golden values, computed by hand (the arithmetic is written out below), for every backend.

Nothing here calls the code under test to get an expected value: the trees are built by writing
the BatchedTree fields directly, and the expected choices / numbers are literals derived in the
comments. Every test runs on the reference and on each compiled backend that loads.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from lrm_engine.core.tree import BatchedTree
from lrm_engine.ops.dispatch import available_backends, backend_error, get_backend

ALL_BACKENDS = ["reference", "cpp", "triton", "cuda"]
NAN, INF = math.nan, math.inf


def _device_for(name: str) -> str:
    if name == "cuda":
        return "cuda"
    if name == "triton":
        return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    return "cpu"


@pytest.fixture(params=ALL_BACKENDS)
def be(request):
    """(backend, device) for every backend that loads here; the others skip with the reason."""
    name = request.param
    if name not in available_backends():
        pytest.skip(f"kernel backend {name!r} not available: {backend_error(name)}")
    dev = _device_for(name)
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"kernel backend {name!r} needs a CUDA GPU")
    return get_backend(name), dev


def i32(x, dev):
    return torch.tensor(x, dtype=torch.int32, device=dev)


def f32(x, dev):
    return torch.tensor(x, dtype=torch.float32, device=dev)


def root_with_children(dev, root_visits, root_sum, priors, children, child_prior=None):
    """One tree (B=1): a root with A = len(priors) actions.

    children: {action: (visits, value_sum)} -- those actions get an expanded child, slots 1, 2, ...
    in increasing action order; the other actions are unexpanded. Grandchildren are unexpanded
    with uniform priors (so a descent into a child ends at (child, 0)).
    """
    A = len(priors)
    tree = BatchedTree.empty(1, 8, A, dev, root_prior=f32([priors], dev))
    tree.visit_count[0, 0] = root_visits
    tree.value_sum[0, 0] = root_sum
    slot = 1
    slots = {}
    for a in sorted(children):
        n, s = children[a]
        tree.parent[0, slot] = 0
        tree.action_from_parent[0, slot] = a
        tree.depth[0, slot] = 1
        tree.children_index[0, 0, a] = slot
        tree.children_prior[0, slot] = 1.0 / A if child_prior is None else child_prior
        tree.visit_count[0, slot] = n
        tree.value_sum[0, slot] = s
        slots[a] = slot
        slot += 1
    tree.num_nodes[0] = slot
    return tree, slots


def select1(backend, tree, k=1, **kw):
    before = {n: t.clone() for n, t in tree.tensors().items()}
    node, act = backend.select(tree, k, **kw)
    # select leaves the tree unchanged (vvisit back to zero).
    for n, t in tree.tensors().items():
        assert torch.equal(t.nan_to_num(0.0), before[n].nan_to_num(0.0)), f"select modified {n}"
    return node.cpu().tolist()[0], act.cpu().tolist()[0]


# ------------------------------------------------------------------------------------- PUCT
def test_puct_golden_three_children(be):
    backend, dev = be
    # Root: N = 8 visits, value_sum 2.4 -> v = 0.3. Priors [0.3, 0.4, 0.3].
    #   a0 -> slot 1: n = 4, sum 2.0 -> q = 0.5
    #   a1 -> slot 2: n = 3, sum 2.4 -> q = 0.8
    #   a2 unexpanded: n = 0 -> qhat = 0
    # lo = min(0.3, 0.5, 0.8) = 0.3, hi = max(0.3, 0.5, 0.8) = 0.8, hi - lo = 0.5
    # qhat = [(0.5-0.3)/0.5, (0.8-0.3)/0.5, 0] = [0.4, 1.0, 0.0]
    # pb_c = 1.25 + ln((8 + 19652 + 1) / 19652) = 1.25 + ln(1.000457969) = 1.250457864
    # sqrt(N) * pb_c = 2.828427125 * 1.250457864 = 3.536828941
    # u0 = 0.3 * 3.536828941 / (4 + 1) = 0.212209736 -> score 0.612209736
    # u1 = 0.4 * 3.536828941 / (3 + 1) = 0.353682894 -> score 1.353682894   <- max
    # u2 = 0.3 * 3.536828941 / (0 + 1) = 1.061048682 -> score 1.061048682
    tree, slots = root_with_children(dev, 8, 2.4, [0.3, 0.4, 0.3], {0: (4, 2.0), 1: (3, 2.4)})
    assert select1(backend, tree) == ([slots[1]], [0])  # descends into a1, stops at its a0


def test_puct_golden_flips_when_visit_count_changes(be):
    backend, dev = be
    # Same as above, but a1 has n = 6 (sum still 2.4 -> q = 0.4):
    # lo = min(0.3, 0.5, 0.4) = 0.3, hi = 0.5, hi - lo = 0.2
    # qhat = [(0.5-0.3)/0.2, (0.4-0.3)/0.2, 0] = [1.0, 0.5, 0.0]
    # u0 = 0.3 * 3.536828941 / 5 = 0.212209736 -> score 1.212209736   <- max
    # u1 = 0.4 * 3.536828941 / 7 = 0.202104511 -> score 0.702104511
    # u2 = 0.3 * 3.536828941 / 1 = 1.061048682 -> score 1.061048682
    tree, slots = root_with_children(dev, 8, 2.4, [0.3, 0.4, 0.3], {0: (4, 2.0), 1: (6, 2.4)})
    assert select1(backend, tree) == ([slots[0]], [0])


def test_puct_golden_node_value_enters_the_normalisation(be):
    backend, dev = be
    # Root: N = 8, value_sum 7.2 -> v = 0.9 (above every child). Priors [0.4, 0.3, 0.3].
    #   a0: n = 4, q = 0.5;  a1: n = 3, q = 0.8;  a2 unexpanded.
    # mctx normalises over the node value too: lo = 0.5, hi = 0.9, hi - lo = 0.4
    # qhat = [0, (0.8-0.5)/0.4, 0] = [0, 0.75, 0]
    # u0 = 0.4 * 3.536828941 / 5 = 0.282946315 -> 0.282946315
    # u1 = 0.3 * 3.536828941 / 4 = 0.265262171 -> 1.015262171
    # u2 = 0.3 * 3.536828941 / 1 = 1.061048682 -> 1.061048682   <- max
    # (Normalising over the children only, qhat1 would be 1 and a1 would win with 1.265.)
    tree, slots = root_with_children(dev, 8, 7.2, [0.4, 0.3, 0.3], {0: (4, 2.0), 1: (3, 2.4)})
    assert select1(backend, tree) == ([0], [2])


def test_puct_golden_unvisited_child_and_degenerate_range(be):
    backend, dev = be
    # Root: N = 3, value_sum 1.5 -> v = 0.5. Priors [0.2, 0.5, 0.3].
    #   a0 -> slot 1: n = 2, sum 1.0 -> q = 0.5;  a1 -> slot 2: expanded, n = 0;  a2 unexpanded.
    # lo = hi = 0.5 -> range clamped to 1e-8; qhat0 = 0/1e-8 = 0; qhat1 = qhat2 = 0 (unvisited)
    # pb_c = 1.25 + ln((3 + 19652 + 1) / 19652) = 1.250203521; sqrt(3) * pb_c = 2.165416
    # u0 = 0.2 * 2.165416 / 3 = 0.144361;  u1 = 0.5 * 2.165416 / 1 = 1.082708  <- max
    # u2 = 0.3 * 2.165416 / 1 = 0.649625
    tree, slots = root_with_children(dev, 3, 1.5, [0.2, 0.5, 0.3], {0: (2, 1.0), 1: (0, 0.0)})
    assert select1(backend, tree) == ([slots[1]], [0])


def test_puct_golden_custom_c1_c2(be):
    backend, dev = be
    # c1 = 0, c2 = 1 make pb_c = ln(N + 2) large enough to see the "+ 1" of mctx's formula.
    # Root N = 2, value_sum 0 -> v = 0. Priors [0.0, 0.6].
    #   a0 -> slot 1: n = 1, sum 1.0 -> q = 1; lo = 0, hi = 1 -> qhat0 = 1, u0 = 0 -> score 1.0
    #   a1 unexpanded: pb_c = 0 + ln((2 + 1 + 1) / 1) = ln 4 = 1.386294
    #     u1 = 0.6 * sqrt(2) * 1.386294 / 1 = 0.6 * 1.414214 * 1.386294 = 1.176310 -> a1 wins
    #   (without the + 1: 0.6 * 1.414214 * ln 3 = 0.932209 < 1 -> a0 would win)
    tree, slots = root_with_children(dev, 2, 0.0, [0.0, 0.6], {0: (1, 1.0)})
    assert select1(backend, tree, c1=0.0, c2=1.0) == ([0], [1])
    # c1 = 0.5 shifts pb_c to 1.886294: u1 = 0.6 * 1.414214 * 1.886294 = 1.600574 -> still a1;
    # with prior 0.35: u1 = 0.35 * 1.414214 * 1.886294 = 0.933668 < 1 -> a0 (descend to (1, 0)).
    tree, slots = root_with_children(dev, 2, 0.0, [0.0, 0.35], {0: (1, 1.0)})
    assert select1(backend, tree, c1=0.5, c2=1.0) == ([slots[0]], [0])


def test_puct_tie_break_lowest_index(be):
    backend, dev = be
    # Fresh root, N = 0: sqrt(0) = 0 so every score is 0 -> action 0.
    tree = BatchedTree.empty(1, 4, 4, dev, root_prior=f32([[0.1, 0.2, 0.3, 0.4]], dev))
    assert select1(backend, tree) == ([0], [0])
    # N = 1, value 0: score_a = prior_a * 1 * pb_c -> equal top priors at a1 and a3 -> a1.
    tree = BatchedTree.empty(1, 4, 4, dev, root_prior=f32([[0.2, 0.4, 0.0, 0.4]], dev))
    tree.visit_count[0, 0] = 1
    assert select1(backend, tree) == ([0], [1])
    # Invalid (prior < 0) actions are never chosen, even when every score ties.
    tree = BatchedTree.empty(1, 4, 3, dev, root_prior=f32([[-1.0, 0.5, 0.5]], dev))
    tree.visit_count[0, 0] = 1
    assert select1(backend, tree) == ([0], [1])
    tree = BatchedTree.empty(1, 4, 3, dev, root_prior=f32([[-1.0, -1.0, 0.0]], dev))
    assert select1(backend, tree) == ([0], [2])


def test_select_stops_at_terminal_and_all_invalid(be):
    backend, dev = be
    tree = BatchedTree.empty(2, 4, 3, dev, root_prior=f32([[-1.0, -1.0, -1.0], [0.3, 0.3, 0.4]], dev))
    tree.terminal[1, 0] = True
    node, act = backend.select(tree, 2)
    assert node.cpu().tolist() == [[0, 0], [0, 0]]
    assert act.cpu().tolist() == [[-1, -1], [-1, -1]]
    # A terminal child is a leaf with NO_ACTION.
    tree, slots = root_with_children(dev, 2, 0.0, [1.0], {0: (1, 0.0)})
    tree.terminal[0, slots[0]] = True
    assert select1(backend, tree) == ([slots[0]], [-1])


# -------------------------------------------------------------------------------------- UCT
def test_uct_golden(be):
    backend, dev = be
    c = math.sqrt(2.0)
    # Root N = 8: ln 8 = 2.079441542
    #   a0: n = 4, sum 2.0 (q 0.5): 0.5 + 1.414213562 * sqrt(2.079441542 / 4) = 0.5 + 1.019667 = 1.519667
    #   a1: n = 1, sum 0.2 (q 0.2): 0.2 + 1.414213562 * sqrt(2.079441542 / 1) = 0.2 + 2.039334 = 2.239334 <- max
    #   a2: n = 2, sum 0.8 (q 0.4): 0.4 + 1.414213562 * sqrt(2.079441542 / 2) = 0.4 + 1.442027 = 1.842027
    tree, slots = root_with_children(dev, 8, 3.0, [0.3, 0.3, 0.4], {0: (4, 2.0), 1: (1, 0.2), 2: (2, 0.8)})
    assert select1(backend, tree, rule="uct", uct_c=c) == ([slots[1]], [0])
    # a1 with n = 3, sum 0.6 (q 0.2): 0.2 + 1.414213562 * sqrt(2.079441542 / 3) = 0.2 + 1.177410 = 1.377410
    # -> a2 (1.842027) wins.
    tree, slots = root_with_children(dev, 8, 3.0, [0.3, 0.3, 0.4], {0: (4, 2.0), 1: (3, 0.6), 2: (2, 0.8)})
    assert select1(backend, tree, rule="uct", uct_c=c) == ([slots[2]], [0])
    # Unvisited actions (expanded with n = 0, or unexpanded) score +inf; ties -> lowest index.
    tree, slots = root_with_children(dev, 8, 3.0, [0.3, 0.3, 0.4], {0: (4, 2.0), 1: (0, 0.0)})
    assert select1(backend, tree, rule="uct") == ([slots[1]], [0])
    tree, slots = root_with_children(dev, 8, 3.0, [0.3, 0.3, 0.4], {0: (4, 2.0)})
    assert select1(backend, tree, rule="uct") == ([0], [1])


def test_unknown_rule_rejected(be):
    backend, dev = be
    tree = BatchedTree.empty(1, 4, 2, dev)
    with pytest.raises((ValueError, RuntimeError), match="rule|uct|puct"):
        backend.select(tree, 1, rule="ucb9")


# ----------------------------------------------------------------------------- virtual loss
def test_virtual_loss_spreads_leaves_in_index_order(be):
    backend, dev = be
    # Root visited once with value 0.5, 3 unexpanded actions with equal priors 1/3, K = 3, vl = 1.
    # k=0: N=1, all u equal -> a0.
    # k=1: N=2, S = 0.5 - 1 = -0.5, v = -0.25; a0 pending: n=1, q=-1; lo=-1, hi=-0.25 -> qhat0 = 0
    #      u0 = p sqrt2 pb_c / 2 < u1 = u2 = p sqrt2 pb_c -> a1.
    # k=2: N=3, v = (0.5 - 2)/3 = -0.5; a0, a1 pending (q=-1, qhat 0, /2) < a2 (/1) -> a2.
    # k=3: N=4, v = (0.5 - 3)/4 = -0.625; all pending with n=1 -> equal -> a0 again.
    tree = BatchedTree.empty(1, 8, 3, dev)
    tree.visit_count[0, 0] = 1
    tree.value_sum[0, 0] = 0.5
    assert select1(backend, tree, 3) == ([0, 0, 0], [0, 1, 2])
    assert select1(backend, tree, 4) == ([0, 0, 0, 0], [0, 1, 2, 0])
    # B = 2: trees are independent; the second has a1 invalid.
    tree = BatchedTree.empty(2, 8, 3, dev, root_prior=f32([[0.5, 0.5, 0.5], [0.5, -1.0, 0.5]], dev))
    tree.visit_count[:, 0] = 1
    node, act = backend.select(tree, 2)
    assert node.cpu().tolist() == [[0, 0], [0, 0]]
    assert act.cpu().tolist() == [[0, 1], [0, 2]]


def test_virtual_loss_one_level_down(be):
    backend, dev = be
    # Root (N=3, v=0) with one child a0 -> slot 1 (n=2, q=0) that has 2 unexpanded actions,
    # and a1 invalid. Every leaf must go through slot 1: K=2 gives (1, 0), (1, 1).
    tree, slots = root_with_children(dev, 3, 0.0, [1.0, -1.0], {0: (2, 0.0)}, child_prior=0.5)
    assert select1(backend, tree, 2) == ([1, 1], [0, 1])


def test_virtual_loss_does_not_force_distinct_leaves_with_skewed_priors(be):
    backend, dev = be
    # The spec's virtual loss only enters qhat (in [0, 1]); a dominant prior wins again:
    # root N=1, v=0, priors [0.99, 0.01].
    # k=0: u0 = 0.99 * 1 * 1.250101766 = 1.237601 > u1 = 0.012501 -> a0
    # k=1: N=2, S=-1, v=-0.5; a0 pending n=1, q=-1 -> lo=-1, qhat0=0;
    #      pb_c = 1.25 + ln(19655/19652) = 1.250152645; sqrt2*pb_c = 1.767982
    #      u0 = 0.99 * 1.767982 / 2 = 0.875151 > u1 = 0.01 * 1.767982 / 1 = 0.017680 -> a0 again
    tree = BatchedTree.empty(1, 8, 2, dev, root_prior=f32([[0.99, 0.01]], dev))
    tree.visit_count[0, 0] = 1
    assert select1(backend, tree, 2) == ([0, 0], [0, 0])
    # expand returns the same slot for the duplicate.
    new = backend.expand(tree, i32([[0, 0]], dev), i32([[0, 0]], dev), f32([[[0.5, 0.5]] * 2], dev))
    assert new.cpu().tolist() == [[1, 1]]
    assert tree.num_nodes.cpu().tolist() == [2]


# ------------------------------------------------------------------------------------ expand
def test_expand_golden(be):
    backend, dev = be
    tree = BatchedTree.empty(2, 6, 3, dev)
    leaf_node = i32([[0, 0, 0], [0, -1, 0]], dev)
    leaf_action = i32([[2, 0, 2], [1, 1, -1]], dev)  # tree 0: duplicate (0, 2); tree 1: two skips
    prior = f32([[[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [9, 9, 9]],
                 [[0.5, 0.5, -1.0], [9, 9, 9], [9, 9, 9]]], dev)
    terminal = torch.tensor([[True, False, False], [False, False, False]], device=dev)
    new = backend.expand(tree, leaf_node, leaf_action, prior, terminal)
    assert new.dtype == torch.int32
    assert new.cpu().tolist() == [[1, 2, 1], [1, -1, -1]]
    assert tree.num_nodes.cpu().tolist() == [3, 2]
    assert tree.parent.cpu().tolist() == [[-1, 0, 0, -1, -1, -1], [-1, 0, -1, -1, -1, -1]]
    assert tree.action_from_parent.cpu().tolist() == [[-1, 2, 0, -1, -1, -1], [-1, 1, -1, -1, -1, -1]]
    assert tree.depth.cpu().tolist() == [[0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]]
    assert tree.children_index[:, 0].cpu().tolist() == [[2, -1, 1], [-1, 1, -1]]
    assert (tree.children_index[:, 1:] == -1).all()
    assert tree.children_prior[0, 1].cpu().tolist() == pytest.approx([0.1, 0.2, 0.7])
    assert tree.children_prior[0, 2].cpu().tolist() == pytest.approx([0.3, 0.3, 0.4])
    assert tree.children_prior[1, 1].cpu().tolist() == pytest.approx([0.5, 0.5, -1.0])
    assert tree.terminal.cpu().tolist() == [[False, True, False, False, False, False], [False] * 6]
    # Expanding an existing child again returns it and allocates nothing.
    again = backend.expand(tree, i32([[0]] * 2, dev), i32([[0], [1]], dev), f32([[[1, 1, 1]]] * 2, dev))
    assert again.cpu().tolist() == [[2], [1]]
    assert tree.num_nodes.cpu().tolist() == [3, 2]
    assert tree.children_prior[0, 2].cpu().tolist() == pytest.approx([0.3, 0.3, 0.4])
    # Depth grows along a chain; terminal=None means not terminal.
    chain = BatchedTree.empty(1, 4, 1, dev)
    for expect in (1, 2, 3):
        got = backend.expand(chain, i32([[expect - 1]], dev), i32([[0]], dev), f32([[[1.0]]], dev))
        assert got.cpu().tolist() == [[expect]]
    assert chain.depth.cpu().tolist() == [[0, 1, 2, 3]]
    assert not chain.terminal.any()


# ------------------------------------------------------------------------------------ backup
def _chain(backend, dev, length=3):
    tree = BatchedTree.empty(1, length + 2, 1, dev)
    for d in range(length):
        backend.expand(tree, i32([[d]], dev), i32([[0]], dev), f32([[[1.0]]], dev))
    return tree


def test_backup_values_and_discount_on_a_chain(be):
    backend, dev = be
    tree = _chain(backend, dev)  # 0 -> 1 -> 2 -> 3
    # Backup 1.0 from slot 3, discount 0.5: slot 3 += 1.0, 2 += 0.5, 1 += 0.25, 0 += 0.125
    backend.backup(tree, i32([[3]], dev), f32([[1.0]], dev), None, 0.5)
    assert tree.visit_count.cpu().tolist() == [[1, 1, 1, 1, 0]]
    assert tree.value_sum.cpu().tolist() == [[0.125, 0.25, 0.5, 1.0, 0.0]]
    # Two backups in one call (k order), one skipped (-1): 2.0 from slot 2 -> 2 += 2, 1 += 1, 0 += 0.5
    backend.backup(tree, i32([[2, -1]], dev), f32([[2.0, 100.0]], dev), None, 0.5)
    assert tree.visit_count.cpu().tolist() == [[2, 2, 2, 1, 0]]
    assert tree.value_sum.cpu().tolist() == [[0.625, 1.25, 2.5, 1.0, 0.0]]
    # Default discount 1: -1.0 from slot 1 -> 1 and 0 each -= 1
    backend.backup(tree, i32([[1]], dev), f32([[-1.0]], dev))
    assert tree.visit_count.cpu().tolist() == [[3, 3, 2, 1, 0]]
    assert tree.value_sum.cpu().tolist() == [[-0.375, 0.25, 2.5, 1.0, 0.0]]
    # node_value = value_sum / visits
    assert tree.node_value().cpu().tolist()[0][:4] == pytest.approx([-0.125, 0.25 / 3, 1.25, 1.0])


def test_backup_path_aggregates_golden(be):
    backend, dev = be
    tree = _chain(backend, dev)
    # Step scores 0.5 (slot 1), 0.25 (slot 2), 0.8 (slot 3), each backed up from its node.
    for node, s in ((1, 0.5), (2, 0.25), (3, 0.8)):
        backend.backup(tree, i32([[node]], dev), f32([[0.0]], dev), f32([[s]], dev))
    # path_min:  [inf, 0.5, min(0.5, 0.25) = 0.25, min(0.25, 0.8) = 0.25]
    # path_sum:  [0, 0.5, 0.75, 1.55]
    # sum_log:   [0, ln .5 = -0.693147, + ln .25 = -2.079442, + ln .8 = -2.302585]
    # path_last: [nan, 0.5, 0.25, 0.8];  path_len: [0, 1, 2, 3]
    got = {k: getattr(tree, k)[0, :4].cpu() for k in
           ("path_min", "path_sum", "path_sum_log", "path_last", "step_score")}
    assert got["path_min"].tolist() == pytest.approx([INF, 0.5, 0.25, 0.25])
    assert got["path_sum"].tolist() == pytest.approx([0.0, 0.5, 0.75, 1.55])
    assert got["path_sum_log"].tolist() == pytest.approx([0.0, -0.693147, -2.079442, -2.302585], abs=1e-6)
    assert math.isnan(got["path_last"][0]) and got["path_last"][1:].tolist() == pytest.approx([0.5, 0.25, 0.8])
    assert math.isnan(got["step_score"][0]) and got["step_score"][1:].tolist() == pytest.approx([0.5, 0.25, 0.8])
    assert tree.path_len[0, :4].cpu().tolist() == [0, 1, 2, 3]
    # A NaN score (unscored) changes nothing; the root never gets a score.
    before = {k: v.clone() for k, v in tree.tensors().items()}
    backend.backup(tree, i32([[3, 0]], dev), f32([[0.0, 0.0]], dev), f32([[NAN, 0.9]], dev))
    for k in ("step_score", "path_min", "path_sum", "path_sum_log", "path_last", "path_len"):
        assert torch.equal(getattr(tree, k).nan_to_num(7.0), before[k].nan_to_num(7.0)), k


# ------------------------------------------------------------------------------------- topk
def test_topk_golden(be):
    backend, dev = be
    scores = f32([[3, 1, 3, NAN, 2, 3],
                  [1, 1, 1, 1, 1, 1],
                  [NAN, -INF, 5, NAN, 0, 0]], dev)
    vals, idx = backend.topk_per_tree(scores, 4)
    # Row 0: 3 at 0, 2, 5 (ties by index), then 2 at 4; NaN never chosen.
    # Row 1: all tie -> first four indices. Row 2: 5, 0, 0, then -inf (valid, not NaN) at 1.
    assert idx.dtype == torch.int32 and vals.dtype == torch.float32
    assert idx.cpu().tolist() == [[0, 2, 5, 4], [0, 1, 2, 3], [2, 4, 5, 1]]
    assert vals.cpu().tolist() == [[3, 3, 3, 2], [1, 1, 1, 1], [5, 0, 0, -INF]]
    valid = torch.tensor([[True, True, False, True, True, True],
                          [False, False, False, False, True, False],
                          [True, False, True, True, True, True]], device=dev)
    vals, idx = backend.topk_per_tree(scores, 4, valid)
    # Invalid or NaN excluded; rows short of 4 padded with index -1 and value -inf.
    assert idx.cpu().tolist() == [[0, 5, 4, 1], [4, -1, -1, -1], [2, 4, 5, -1]]
    assert vals.cpu().tolist() == [[3, 3, 2, 1], [1, -INF, -INF, -INF], [5, 0, 0, -INF]]
    # k larger than the row.
    vals, idx = backend.topk_per_tree(f32([[0.5, 2.0]], dev), 3)
    assert idx.cpu().tolist() == [[1, 0, -1]] and vals.cpu().tolist() == [[2.0, 0.5, -INF]]


# --------------------------------------------------------------------------- segment_reduce
SEG_VALUES = [1.0, 3.0, -2.0, 4.0, 0.5, 2.0]
SEG_OFFSETS = [0, 2, 2, 5, 6]  # segments [1, 3], [], [-2, 4, 0.5], [2]
SEG_EXPECT = {
    "min": [1.0, INF, -2.0, 2.0],
    "max": [3.0, -INF, 4.0, 2.0],
    "sum": [4.0, 0.0, 2.5, 2.0],
    "mean": [2.0, NAN, 2.5 / 3, 2.0],  # 2.5 / 3 = 0.833333
    "last": [3.0, NAN, 0.5, 2.0],
    "prod": [3.0, 1.0, -4.0, 2.0],  # 1*3, empty, -2*4*0.5, 2
}


@pytest.mark.parametrize("op", sorted(SEG_EXPECT))
def test_segment_reduce_golden(be, op):
    backend, dev = be
    out = backend.segment_reduce(f32(SEG_VALUES, dev), torch.tensor(SEG_OFFSETS, device=dev), op)
    assert out.dtype == torch.float32 and tuple(out.shape) == (4,)
    torch.testing.assert_close(out.cpu(), torch.tensor(SEG_EXPECT[op]), equal_nan=True)


def test_segment_reduce_all_empty_and_unknown_op(be):
    backend, dev = be
    out = backend.segment_reduce(f32([], dev), torch.tensor([0, 0, 0], device=dev), "sum")
    assert out.cpu().tolist() == [0.0, 0.0]
    with pytest.raises((ValueError, RuntimeError), match="median|op"):
        backend.segment_reduce(f32(SEG_VALUES, dev), torch.tensor(SEG_OFFSETS, device=dev), "median")


# -------------------------------------------------------------------------- group_normalize
def test_group_normalize_golden(be):
    backend, dev = be
    x = f32([1.0, 2.0, 3.0, 4.0, 10.0, 5.0, 7.0], dev)
    offsets = torch.tensor([0, 3, 4, 4, 7], device=dev)  # [1, 2, 3], [4], [], [10, 5, 7]
    # [1, 2, 3]: mean 2; unbiased std sqrt(2 / 2) = 1 -> (x - 2) / 1.0001 = [-0.99990001, 0, 0.99990001]
    #            biased std sqrt(2 / 3) = 0.816496581 -> (x - 2) / 0.816596581 = [-1.224595, 0, 1.224595]
    # [4]: group of one -> std 0 -> (4 - 4) / 1e-4 = 0
    # [10, 5, 7]: mean 22/3 = 7.333333; squared deviations 7.111111 + 5.444444 + 0.111111 = 12.666667
    #   unbiased std sqrt(12.666667 / 2) = 2.516611 -> / 2.516711: [1.059584, -0.927136, -0.132448]
    #   biased   std sqrt(12.666667 / 3) = 2.054805 -> / 2.054905: [1.297708, -1.135495, -0.162214]
    unb = backend.group_normalize(x, offsets)
    torch.testing.assert_close(
        unb.cpu(), torch.tensor([-0.99990001, 0.0, 0.99990001, 0.0, 1.059584, -0.927136, -0.132448]),
        rtol=1e-5, atol=1e-5)
    bia = backend.group_normalize(x, offsets, 1e-4, False)
    torch.testing.assert_close(
        bia.cpu(), torch.tensor([-1.224595, 0.0, 1.224595, 0.0, 1.297708, -1.135495, -0.162214]),
        rtol=1e-5, atol=1e-5)
    # eps is honoured: eps = 1 on [1, 2, 3] unbiased -> (x - 2) / 2
    e1 = backend.group_normalize(x[:3].contiguous(), torch.tensor([0, 3], device=dev), 1.0)
    torch.testing.assert_close(e1.cpu(), torch.tensor([-0.5, 0.0, 0.5]))
    # A constant group normalises to 0, not NaN.
    c = backend.group_normalize(f32([3.0, 3.0, 3.0], dev), torch.tensor([0, 3], device=dev))
    assert c.cpu().tolist() == [0.0, 0.0, 0.0]
