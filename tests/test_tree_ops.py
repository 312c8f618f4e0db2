"""Every compiled backend against the reference (the specification) on random inputs.

Random MCTS-like sequences (select K leaves -> expand with random priors, some invalid, some
terminal -> backup random values, step scores (some NaN) and discount) on trees of odd sizes,
including B=1, A=1, depth-1 and full trees; the backend's tree is compared with the reference
run on a clone after every op (indices exactly, floats to 1e-6, NaN == NaN). topk_per_tree,
segment_reduce and group_normalize on random inputs with ties, empty segments and padding.
Invariants (visit counts, path aggregates against a brute-force walk, select never returns an
expanded action, virtual loss spreading) are checked on the reference and on every backend.

Backends that do not load here are skipped with the reason from the dispatcher. Triton runs on
the CPU under TRITON_INTERPRET=1 (tests/conftest.py) and gets few examples, since the
interpreter is slow.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrm_engine.core.tree import BatchedTree
from lrm_engine.ops import reference as ref
from lrm_engine.ops.dispatch import available_backends, backend_error, get_backend

BACKENDS = ["cpp", "triton", "cuda"]
MAX_EXAMPLES = {"reference": 25, "cpp": 25, "triton": 6, "cuda": 25}
NAN, INF = math.nan, math.inf


def _device_for(name: str) -> str:
    if name == "cuda":
        return "cuda"
    if name == "triton":
        return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    return "cpu"


def load(name: str):
    """(backend, device), or skip with the reason the backend did not load."""
    if name not in available_backends():
        pytest.skip(f"kernel backend {name!r} not available: {backend_error(name)}")
    dev = _device_for(name)
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"kernel backend {name!r} needs a CUDA GPU")
    return get_backend(name), dev


def hyp(name: str, max_examples: int | None = None):
    return settings(
        max_examples=max_examples or MAX_EXAMPLES[name], deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------------------ comparisons
def clone_tree(tree: BatchedTree, device) -> BatchedTree:
    return BatchedTree(**{k: v.detach().clone().to(device) for k, v in tree.tensors().items()})


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got = got.detach().cpu()
    want = want.detach().cpu()
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if want.dtype.is_floating_point:
        torch.testing.assert_close(
            got, want, rtol=1e-6, atol=1e-6, equal_nan=True, msg=lambda m: f"{what}: {m}"
        )
    else:
        assert torch.equal(got, want), f"{what}:\n got {got.tolist()}\nwant {want.tolist()}"


def assert_trees_equal(got: BatchedTree, want: BatchedTree, where: str) -> None:
    for name, w in want.tensors().items():
        assert_same(getattr(got, name), w, f"after {where}: tree.{name}")


# ------------------------------------------------------------------------------- invariants
def check_visits(tree: BatchedTree, self_backups: list[dict[int, int]]) -> None:
    """visits[n] == (backups that started at n) + sum of the children's visits.

    With every expanded node backed up once from itself and the root once at the start, this is
    the invariant "a node's visits = 1 + its children's visits".
    """
    visits = tree.visit_count.cpu()
    children = tree.children_index.cpu()
    num = tree.num_nodes.cpu().tolist()
    for b in range(tree.batch_size):
        for n in range(num[b]):
            kids = [c for c in children[b, n].tolist() if c >= 0]
            expect = self_backups[b].get(n, 0) + sum(int(visits[b, c]) for c in kids)
            assert int(visits[b, n]) == expect, (
                f"tree {b} node {n}: visits {int(visits[b, n])} != {self_backups[b].get(n, 0)} "
                f"own backups + children {[int(visits[b, c]) for c in kids]}"
            )
    # Unused slots are untouched.
    for b in range(tree.batch_size):
        assert (visits[b, num[b]:] == 0).all()


def check_aggregates(tree: BatchedTree) -> int:
    """Path aggregates of every scored node whose whole path is scored, against a walk up."""
    checked = 0
    parent = tree.parent.cpu().tolist()
    score = tree.step_score.cpu().double()
    got = {k: getattr(tree, k).cpu() for k in ("path_min", "path_sum", "path_sum_log", "path_last", "path_len")}
    for b in range(tree.batch_size):
        for m in range(1, int(tree.num_nodes[b])):
            path, n = [], m
            while parent[b][n] != BatchedTree.NO_PARENT:
                path.append(float(score[b, n]))
                n = parent[b][n]
            if any(math.isnan(s) for s in path):
                continue  # see the report: aggregates restart after an unscored step
            path.reverse()  # root-ward walk, reversed: the order the backup accumulates in
            expect = {
                "path_min": min(path),
                "path_sum": math.fsum(path),
                "path_sum_log": math.fsum(math.log(s) if s > 0 else -INF for s in path),
                "path_last": path[-1],
            }
            for k, e in expect.items():
                g = float(got[k][b, m])
                assert (g == e) or math.isclose(g, e, rel_tol=1e-5, abs_tol=1e-5), (
                    f"tree {b} node {m} path {path}: {k} {g} != brute force {e}"
                )
            assert int(got["path_len"][b, m]) == len(path), f"tree {b} node {m}: path_len"
            checked += 1
    return checked


def check_select_result(tree: BatchedTree, leaf_node, leaf_action) -> None:
    """Leaves are existing nodes; (node, action) is never an expanded or invalid action; a
    NO_ACTION leaf is terminal or has no valid action."""
    ln, la = leaf_node.cpu(), leaf_action.cpu()
    ci, pr, term = tree.children_index.cpu(), tree.children_prior.cpu(), tree.terminal.cpu()
    for b in range(ln.shape[0]):
        for k in range(ln.shape[1]):
            n, a = int(ln[b, k]), int(la[b, k])
            assert 0 <= n < int(tree.num_nodes[b])
            if a >= 0:
                assert int(ci[b, n, a]) == BatchedTree.UNVISITED, f"select returned expanded ({n}, {a})"
                assert float(pr[b, n, a]) >= 0, f"select returned invalid ({n}, {a})"
                assert not bool(term[b, n])
            else:
                assert bool(term[b, n]) or not bool((pr[b, n] >= 0).any())


# --------------------------------------------------------------------------- MCTS sequences
@dataclass
class MCTSParams:
    B: int
    A: int
    N: int  # initial node slots (grown on demand)
    K: int
    steps: int
    rule: str
    virtual_loss: float
    discount: float
    c1: float
    c2: float
    uct_c: float
    max_depth: int | None  # nodes at this depth are terminal (a full tree is reachable)
    p_invalid: float
    p_terminal: float
    p_nan: float
    p_skip: float  # backups skipped (-1 node)
    int_values: bool  # small integer-valued values / priors -> exact ties
    seed: int


@st.composite
def mcts_params(draw, full: bool = False):
    B = draw(st.sampled_from([1, 1, 2, 3, 5]))
    A = draw(st.sampled_from([1, 1, 2, 3, 4, 7]))
    max_depth = draw(st.sampled_from([1, 2, 3] if full else [None, None, 1, 2, 3]))
    return MCTSParams(
        B=B,
        A=A,
        N=draw(st.integers(1, 13)),
        K=draw(st.integers(1, 4)),
        steps=draw(st.integers(1, 10 if full else 6)),
        rule=draw(st.sampled_from(["puct", "puct", "uct"])),
        virtual_loss=draw(st.sampled_from([1.0, 1.0, 0.5, 0.0, 3.0])),
        discount=draw(st.sampled_from([1.0, 1.0, 0.9, 0.5])),
        c1=draw(st.sampled_from([1.25, 1.25, 0.5])),
        c2=draw(st.sampled_from([19652.0, 19652.0, 2.0])),
        uct_c=draw(st.sampled_from([math.sqrt(2.0), 1.0])),
        max_depth=max_depth,
        p_invalid=draw(st.sampled_from([0.0, 0.25, 0.6])),
        p_terminal=draw(st.sampled_from([0.0, 0.0, 0.2, 0.5])),
        p_nan=draw(st.sampled_from([0.0, 0.3])),
        p_skip=draw(st.sampled_from([0.0, 0.0, 0.2])),
        int_values=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


class Rand:
    """Random inputs for one sequence (seeded torch generator on the CPU)."""

    def __init__(self, p: MCTSParams):
        self.p = p
        self.g = torch.Generator().manual_seed(p.seed)

    def u(self, *shape):
        return torch.rand(shape, generator=self.g)

    def pick(self, choices, *shape):
        c = torch.tensor(choices, dtype=torch.float32)
        return c[torch.randint(len(choices), shape, generator=self.g)]

    def priors(self, *shape):
        p = self.pick([0.0, 0.25, 0.5, 0.5, 1.0], *shape) if self.p.int_values else self.u(*shape)
        return torch.where(self.u(*shape) < self.p.p_invalid, torch.tensor(-1.0), p)

    def values(self, *shape):
        if self.p.int_values:
            return self.pick([-1.0, -0.5, 0.0, 0.5, 1.0], *shape)
        return self.u(*shape) * 2 - 1

    def scores(self, *shape):
        s = self.pick([0.0, 0.25, 0.5, 1.0], *shape) if self.p.int_values else self.u(*shape) * 0.99 + 0.01
        return torch.where(self.u(*shape) < self.p.p_nan, torch.tensor(NAN), s)


def mcts_step_inputs(r: Rand, tree: BatchedTree, leaf_node, leaf_action):
    """Priors, terminal flags for the new children (CPU tensors)."""
    p = r.p
    B, K = leaf_node.shape
    child_prior = r.priors(B, K, p.A)
    terminal = r.u(B, K) < p.p_terminal
    if p.max_depth is not None:
        d = torch.gather(tree.depth.cpu(), 1, leaf_node.cpu().long().clamp_min(0))
        terminal = terminal | (d + 1 >= p.max_depth)
    return child_prior, terminal


def backup_nodes(r: Rand, new, leaf_node, dedup: bool):
    """Back up from the new child, or from the leaf itself when nothing was expanded."""
    nodes = torch.where(new >= 0, new, leaf_node).clone()
    if dedup:  # one backup per node per call (keeps "visits = 1 + children" exact)
        for b in range(nodes.shape[0]):
            seen = set()
            for k in range(nodes.shape[1]):
                n = int(nodes[b, k])
                if n in seen:
                    nodes[b, k] = -1
                seen.add(n)
    else:
        nodes[r.u(*nodes.shape) < r.p.p_skip] = -1
    return nodes


def run_against_reference(p: MCTSParams, backend, dev) -> None:
    r = Rand(p)
    root_prior = r.priors(p.B, p.A)
    want = BatchedTree.empty(p.B, p.N, p.A, root_prior=root_prior)
    want.terminal[:, 0] = r.u(p.B) < p.p_terminal / 4
    got = clone_tree(want, dev)
    own = [dict() for _ in range(p.B)]

    # Initialise the roots by one backup.
    roots = torch.zeros(p.B, 1, dtype=torch.int32)
    v0 = r.values(p.B, 1)
    ref.backup(want, roots, v0, None, p.discount)
    backend.backup(got, roots.to(dev), v0.to(dev), None, p.discount)
    assert_trees_equal(got, want, "root backup")
    for b in range(p.B):
        own[b][0] = 1

    sel_kw = dict(rule=p.rule, c1=p.c1, c2=p.c2, uct_c=p.uct_c, virtual_loss=p.virtual_loss)
    for step in range(p.steps):
        ln_w, la_w = ref.select(want, p.K, **sel_kw)
        ln_g, la_g = backend.select(got, p.K, **sel_kw)
        assert_same(ln_g, ln_w, f"step {step} select: leaf_node")
        assert_same(la_g, la_w, f"step {step} select: leaf_action")
        assert_trees_equal(got, want, f"step {step} select")
        check_select_result(want, ln_w, la_w)

        prior, terminal = mcts_step_inputs(r, want, ln_w, la_w)
        want.ensure_capacity(p.K, grow=True)
        got.ensure_capacity(p.K, grow=True)
        new_w = ref.expand(want, ln_w, la_w, prior, terminal)
        new_g = backend.expand(got, ln_w.to(dev), la_w.to(dev), prior.to(dev), terminal.to(dev))
        assert_same(new_g, new_w, f"step {step} expand: new_node")
        assert_trees_equal(got, want, f"step {step} expand")

        nodes = backup_nodes(r, new_w, ln_w, dedup=False)
        values, scores = r.values(p.B, p.K), r.scores(p.B, p.K)
        with_scores = bool(r.u(1) < 0.8)
        ref.backup(want, nodes, values, scores if with_scores else None, p.discount)
        backend.backup(got, nodes.to(dev), values.to(dev),
                       scores.to(dev) if with_scores else None, p.discount)
        assert_trees_equal(got, want, f"step {step} backup")
        for b in range(p.B):
            for n in nodes[b].tolist():
                if n >= 0:
                    own[b][n] = own[b].get(n, 0) + 1
    check_visits(got, own)
    check_aggregates(got)


@pytest.mark.parametrize("name", BACKENDS)
def test_mcts_sequences_match_reference(name):
    backend, dev = load(name)

    @hyp(name)
    @given(p=mcts_params())
    def run(p):
        run_against_reference(p, backend, dev)

    run()


@pytest.mark.parametrize("name", BACKENDS)
def test_full_trees_match_reference(name):
    """Depth-limited trees small enough to fill up: selection then only finds terminal leaves."""
    backend, dev = load(name)

    @hyp(name)
    @given(p=mcts_params(full=True))
    def run(p):
        run_against_reference(p, backend, dev)

    run()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 2, 1), (1, 6, 1), (1, 3, 2), (3, 11, 3), (2, 9, 5)])
def test_fixed_shapes_match_reference(name, shape):
    """Deterministic corner shapes (B=1, A=1, K=1, depth 1, near-full capacity) on every backend."""
    backend, dev = load(name)
    B, N, A = shape
    for seed, rule, depth in ((0, "puct", None), (1, "uct", 1), (2, "puct", 2)):
        p = MCTSParams(B=B, A=A, N=N, K=min(A, 2), steps=4, rule=rule, virtual_loss=1.0,
                       discount=0.9, c1=1.25, c2=19652.0, uct_c=math.sqrt(2.0), max_depth=depth,
                       p_invalid=0.2, p_terminal=0.1, p_nan=0.3, p_skip=0.0, int_values=bool(seed % 2),
                       seed=seed)
        run_against_reference(p, backend, dev)


# ----------------------------------------------------- invariants on the reference and backends
def clean_mcts(p: MCTSParams, backend, dev) -> tuple[BatchedTree, list[dict[int, int]]]:
    """MCTS on one backend alone: each new node backed up once from itself, roots once."""
    r = Rand(p)
    tree = BatchedTree.empty(p.B, p.N, p.A, dev, root_prior=r.priors(p.B, p.A).to(dev))
    own = [dict() for _ in range(p.B)]
    backend.backup(tree, torch.zeros(p.B, 1, dtype=torch.int32, device=dev),
                   r.values(p.B, 1).to(dev), None, p.discount)
    for b in range(p.B):
        own[b][0] = 1
    sel_kw = dict(rule=p.rule, c1=p.c1, c2=p.c2, uct_c=p.uct_c, virtual_loss=p.virtual_loss)
    for _ in range(p.steps):
        ln, la = backend.select(tree, p.K, **sel_kw)
        assert ln.dtype == torch.int32 and la.dtype == torch.int32
        assert tuple(ln.shape) == (p.B, p.K) and ln.device == tree.device
        check_select_result(tree, ln, la)
        prior, terminal = mcts_step_inputs(r, tree, ln, la)
        tree.ensure_capacity(p.K, grow=True)
        new = backend.expand(tree, ln, la, prior.to(dev), terminal.to(dev))
        nodes = backup_nodes(r, new.cpu(), ln.cpu(), dedup=True)
        backend.backup(tree, nodes.to(dev), r.values(p.B, p.K).to(dev),
                       r.scores(p.B, p.K).to(dev), p.discount)
        for b in range(p.B):
            for n in nodes[b].tolist():
                if n >= 0:
                    own[b][n] = own[b].get(n, 0) + 1
    return tree, own


@pytest.mark.parametrize("name", ["reference", *BACKENDS])
def test_invariants(name):
    if name == "reference":
        backend, dev = get_backend("reference"), "cpu"
    else:
        backend, dev = load(name)

    @hyp(name)
    @given(p=mcts_params())
    def run(p):
        tree, own = clean_mcts(p, backend, dev)
        check_visits(tree, own)
        # The literal invariant: a non-terminal node with a valid action was backed up once from
        # itself, so its visits are 1 + its children's visits.
        term, prior = tree.terminal.cpu(), tree.children_prior.cpu()
        for b in range(p.B):
            for n in range(int(tree.num_nodes[b])):
                if not term[b, n] and (prior[b, n] >= 0).any() and n in own[b]:
                    assert own[b][n] == 1
        check_aggregates(tree)
        assert (tree.vvisit == 0).all()
        # Structure: parents, depths and children links agree.
        par, act, dep, ci = (t.cpu() for t in (tree.parent, tree.action_from_parent, tree.depth,
                                               tree.children_index))
        for b in range(p.B):
            for n in range(1, int(tree.num_nodes[b])):
                pa, a = int(par[b, n]), int(act[b, n])
                assert 0 <= pa < n and int(ci[b, pa, a]) == n and int(dep[b, n]) == int(dep[b, pa]) + 1

    run()


@pytest.mark.parametrize("name", ["reference", *BACKENDS])
def test_virtual_loss_distinct_leaves(name):
    """Fresh roots, equal priors on the valid actions, root mean value >= -virtual_loss: the K
    leaves (K <= valid actions) are the first K valid actions, in index order."""
    if name == "reference":
        backend, dev = get_backend("reference"), "cpu"
    else:
        backend, dev = load(name)

    @hyp(name)
    @given(
        B=st.integers(1, 3), A=st.integers(1, 7), data=st.data(),
        vl=st.sampled_from([0.5, 1.0, 2.0]), prior=st.sampled_from([0.1, 0.5, 1.0]),
    )
    def run(B, A, data, vl, prior):
        valid = torch.tensor([[data.draw(st.booleans()) for _ in range(A)] for _ in range(B)])
        valid[:, data.draw(st.integers(0, A - 1))] = True
        K = data.draw(st.integers(1, int(valid.sum(1).min())))
        visits = torch.tensor([data.draw(st.integers(0, 5)) for _ in range(B)], dtype=torch.int32)
        mean = torch.tensor([data.draw(st.sampled_from([-vl, -0.25, 0.0, 0.5, 1.0])) for _ in range(B)])
        tree = BatchedTree.empty(B, K + 1, A, dev,
                                 root_prior=torch.where(valid, prior, -1.0).to(dev))
        tree.visit_count[:, 0] = visits.to(dev)
        tree.value_sum[:, 0] = (mean * visits).to(dev)
        ln, la = backend.select(tree, K, virtual_loss=vl)
        assert (ln.cpu() == 0).all()
        for b in range(B):
            assert la[b].cpu().tolist() == torch.nonzero(valid[b]).flatten()[:K].tolist()

    run()


# ---------------------------------------------------------------------------------- topk
@st.composite
def topk_inputs(draw):
    B, M = draw(st.integers(1, 5)), draw(st.integers(1, 11))
    k = draw(st.integers(1, M + 2))
    pool = draw(st.sampled_from([[0.0, 1.0, 2.0], [-2.0, -1.0, 0.0, 1.0, 3.0, NAN],
                                 [1.0, NAN, INF, -INF, 0.5]]))
    scores = torch.tensor([[draw(st.sampled_from(pool)) for _ in range(M)] for _ in range(B)],
                          dtype=torch.float32)
    valid = None
    if draw(st.booleans()):
        valid = torch.tensor([[draw(st.booleans()) for _ in range(M)] for _ in range(B)])
    return scores, k, valid


@pytest.mark.parametrize("name", BACKENDS)
def test_topk_matches_reference(name):
    backend, dev = load(name)

    @hyp(name, max_examples=MAX_EXAMPLES[name] * 2)
    @given(inp=topk_inputs())
    def run(inp):
        scores, k, valid = inp
        want_v, want_i = ref.topk_per_tree(scores, k, valid)
        got_v, got_i = backend.topk_per_tree(scores.to(dev), k, None if valid is None else valid.to(dev))
        assert got_v.device.type == torch.device(dev).type
        assert_same(got_i, want_i, "topk index")
        assert_same(got_v, want_v, "topk values")

    run()


def test_topk_reference_against_brute_force():
    """The reference itself, against a sort written out in Python."""

    @hyp("reference", max_examples=60)
    @given(inp=topk_inputs())
    def run(inp):
        scores, k, valid = inp
        got_v, got_i = ref.topk_per_tree(scores, k, valid)
        for b in range(scores.shape[0]):
            ok = [j for j in range(scores.shape[1]) if not math.isnan(scores[b, j])
                  and (valid is None or bool(valid[b, j]))]
            order = sorted(ok, key=lambda j: (-float(scores[b, j]), j))[:k]
            order += [-1] * (k - len(order))
            assert got_i[b].tolist() == order
            assert got_v[b].tolist() == [float(scores[b, j]) if j >= 0 else -INF for j in order]

    run()


# ------------------------------------------------------------------- segments and groups
@st.composite
def csr_inputs(draw, partial: bool, grid: bool = False):
    S = draw(st.integers(0 if not partial else 1, 7))
    lengths = [draw(st.sampled_from([0, 0, 1, 1, 2, 3, 4])) for _ in range(S)]
    lead = draw(st.integers(0, 2)) if partial else 0
    tail = draw(st.integers(0, 2)) if partial else 0
    T = lead + sum(lengths) + tail
    if draw(st.booleans()):  # small integers: exact sums/products, ties in min/max
        vals = [draw(st.sampled_from([-3.0, -1.0, 0.0, 1.0, 2.0, 2.0, 3.0])) for _ in range(T)]
    elif grid:  # multiples of 1/8: no catastrophic cancellation in (x - mean) / (std + eps)
        vals = [draw(st.integers(-32, 32)) / 8.0 for _ in range(T)]
    else:
        vals = [draw(st.floats(-4, 4, allow_nan=False, width=32)) for _ in range(T)]
    offsets = [lead]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return torch.tensor(vals, dtype=torch.float32), torch.tensor(offsets, dtype=torch.int64)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("partial", [False, True], ids=["cover", "lead-tail"])
def test_segment_reduce_matches_reference(name, partial):
    backend, dev = load(name)

    @hyp(name, max_examples=MAX_EXAMPLES[name] * 2)
    @given(inp=csr_inputs(partial), op=st.sampled_from(ref.SEGMENT_OPS))
    def run(inp, op):
        values, offsets = inp
        want = ref.segment_reduce(values, offsets, op)
        got = backend.segment_reduce(values.to(dev), offsets.to(dev), op)
        if op in ("sum", "mean", "prod"):  # summation order may differ for non-integer floats
            got, want = got.cpu(), want.cpu()
            assert got.shape == want.shape and got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
        else:
            assert_same(got, want, f"segment_reduce {op}")

    run()


def test_segment_reduce_reference_against_brute_force():
    @hyp("reference", max_examples=60)
    @given(inp=csr_inputs(partial=True), op=st.sampled_from(ref.SEGMENT_OPS))
    def run(inp, op):
        values, offsets = inp
        got = ref.segment_reduce(values, offsets, op).tolist()
        o = offsets.tolist()
        for s in range(len(o) - 1):
            seg = values[o[s]: o[s + 1]].double().tolist()
            want = {
                "min": min(seg, default=INF), "max": max(seg, default=-INF), "sum": math.fsum(seg),
                "mean": math.fsum(seg) / len(seg) if seg else NAN, "last": seg[-1] if seg else NAN,
                "prod": math.prod(seg),
            }[op]
            assert (math.isnan(want) and math.isnan(got[s])) or math.isclose(
                got[s], want, rel_tol=1e-5, abs_tol=1e-5), (op, seg, got[s], want)

    run()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("partial", [False, True], ids=["cover", "lead-tail"])
def test_group_normalize_matches_reference(name, partial):
    backend, dev = load(name)

    @hyp(name, max_examples=MAX_EXAMPLES[name] * 2)
    @given(inp=csr_inputs(partial, grid=True), eps=st.sampled_from([1e-4, 1e-6, 0.5]), unbiased=st.booleans())
    def run(inp, eps, unbiased):
        x, offsets = inp
        want = ref.group_normalize(x, offsets, eps, unbiased)
        got = backend.group_normalize(x.to(dev), offsets.to(dev), eps, unbiased)
        got, want = got.cpu(), want.cpu()
        assert got.shape == want.shape and got.dtype == want.dtype
        # Mean and std are float32 reductions whose order may differ; results are O(1) numbers.
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5, equal_nan=True)

    run()


def test_group_normalize_reference_against_brute_force():
    @hyp("reference", max_examples=60)
    @given(inp=csr_inputs(partial=True, grid=True), eps=st.sampled_from([1e-4, 0.5]), unbiased=st.booleans())
    def run(inp, eps, unbiased):
        x, offsets = inp
        got = ref.group_normalize(x, offsets, eps, unbiased).tolist()
        o = offsets.tolist()
        want = x.double().tolist()  # outside every group: unchanged
        for g in range(len(o) - 1):
            seg = want[o[g]: o[g + 1]]
            if not seg:
                continue
            mean = math.fsum(seg) / len(seg)
            ss = math.fsum((v - mean) ** 2 for v in seg)
            std = 0.0 if len(seg) == 1 else math.sqrt(ss / (len(seg) - 1 if unbiased else len(seg)))
            want[o[g]: o[g + 1]] = [(v - mean) / (std + eps) for v in seg]
        for a, b in zip(got, want):
            assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4), (got, want)

    run()
