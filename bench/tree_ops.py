"""Benchmark: batched MCTS tree ops (issue 2, section 6).

Workload: MCTS with 64 simulations on B trees (swept: `--batch 64,256` by default), A=8 actions, one leaf per tree per simulation,
PUCT in mctx's form (c1=1.25, c2=19652, q-values min-max normalised over the node and its visited
children), undiscounted backup, and a trivial model: seeded random prior logits (softmax) and
values in [-1, 1] for the root and every expanded node.

Side by side in one process, one compute thread everywhere (see bench/_common.py), warm-up then
median of >= 5 runs:

  cpp          lrm_engine's C++ backend: BatchedTree + backend.select / expand / backup
  reference    the same loop on the pure-torch reference backend (the specification)
  python_tree  the strongest plain pointer-based tree we could write in Python (lazy children
               created on selection like the batched tree and mctx, __slots__, PUCT inlined in one
               loop, iterative backup); the B trees are searched one after another. This lean
               tree is the headline Python baseline (`speedup_vs_python_tree`).
  python_tree_openr  the same search written the way OpenR writes AlphaZero-style MCTS (all A
               children created at expansion, per-child UCB function, recursive backup); slower
               than the lean tree, reported as extra (`speedup_vs_python_tree_openr`).
  mctx         mctx.muzero_policy, jitted, JAX on CPU (compile excluded, block_until_ready)

Random numbers (fairness): for cpp, reference and python_tree every random number of the
trivial model (root logits and values, per-simulation logits and values for every tree) is drawn
once, before timing, with a seeded torch.Generator; the priors are soft-maxed then too. The
timed loop only hands each simulation's pre-made [B, 1, A] / [B, 1] slices (python_tree: the same
numbers as Python lists) to the tree. mctx calls its recurrent_fn inside the jitted search, so
its model draws jax.random numbers there (threefry for 256 x 9 numbers per simulation); that
cost is measured on its own and reported as extra.mctx_model_only_s (it is small). We also time
cpp with the model's torch ops inside the loop (extra.cpp_model_in_loop_s: randn + softmax +
rand per simulation), which is what a caller without pre-generation pays.

Agreement: cpp and reference must produce identical trees for the same seed (asserted once,
outside the timing); the python tree uses the same random numbers and is compared node by node
(it accumulates value sums in float64, ours in float32, so a near-tie could in principle split a
tree differently; the count of identical trees is reported).

Sweep: the whole comparison runs at every B of `--batch` (the batch of trees is the size that
matters: the batched ops amortise their per-call cost over B, the Python trees pay per node).
`median_s` / `ratios` are the largest B's; `sweep` holds every B's figures.

Last stdout line: {"bench": "tree_ops", "workload": {...}, "median_s": {...}, "ratios": {...},
"sweep": [{"batch_trees": B, "median_s": ..., "ratios": ...}, ...], ...}
Exit status 1 if the cpp backend is missing (its figures are null then).

Usage: python bench/tree_ops.py [--batch 64,256] [--repeats 5] [--profile] [--no-mctx] [--pin-cpu N]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (must run before torch / numpy / jax are imported)

B, A, SIMS = 256, 8, 64
C1, C2 = 1.25, 19652.0
SEED = 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7, help="timed runs per variant (median), >= 5")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per variant")
    p.add_argument("--batch", default="64,256",
                   help="comma-separated batch sizes B (trees searched at once) to sweep; the last is the headline")
    p.add_argument("--profile", action="store_true", help="per-call breakdown of the cpp loop")
    p.add_argument("--no-mctx", action="store_true", help="skip mctx (e.g. jax not installed)")
    p.add_argument(
        "--pin-cpu", type=int, default=None,
        help="also bind the process to this core (index into the allowed set); default: no binding",
    )
    return p.parse_args(argv)


ARGS = parse_args()
THREADS = _common.pin_threads(ARGS.pin_cpu)

import torch  # noqa: E402

from lrm_engine.core.tree import BatchedTree  # noqa: E402
from lrm_engine.ops import available_backends, get_backend  # noqa: E402
from lrm_engine.ops.dispatch import backend_error  # noqa: E402


def log(*a):
    print(*a, file=sys.stdout, flush=True)


# ----------------------------------------------------------------------------- trivial model
def make_model_data(seed: int = SEED):
    """Every random number the trivial model will hand out, drawn before timing."""
    g = torch.Generator().manual_seed(seed)
    root_logits = torch.randn(B, A, generator=g)
    root_value = torch.rand(B, generator=g) * 2 - 1
    sim_logits = torch.randn(SIMS, B, A, generator=g)
    sim_value = torch.rand(SIMS, B, generator=g) * 2 - 1
    root_prior = torch.softmax(root_logits, -1).contiguous()
    sim_prior = torch.softmax(sim_logits, -1).contiguous()
    return {
        "root_logits": root_logits,
        "root_prior": root_prior,
        "root_value": root_value,
        "sim_logits": sim_logits,
        "sim_prior": sim_prior,
        "sim_value": sim_value,
        # Per-simulation views in the shapes the ops take, made outside the timed region.
        "root_value_k": root_value.view(B, 1).contiguous(),
        "sim_prior_k": [sim_prior[s].view(B, 1, A).contiguous() for s in range(SIMS)],
        "sim_value_k": [sim_value[s].view(B, 1).contiguous() for s in range(SIMS)],
    }


# ----------------------------------------------------------------------------- (a), (b): ours
def run_batched(backend, data) -> BatchedTree:
    """One full search on B trees with backend's select / expand / backup, called directly.

    The tree is allocated with N = SIMS + 1 slots (root + one new node per simulation and tree),
    so `tree.ensure_capacity` is not needed inside the loop: no expansion can run out of slots.
    """
    select, expand, backup = backend.select, backend.expand, backend.backup
    tree = BatchedTree.empty(B, SIMS + 1, A, root_prior=data["root_prior"])
    root = torch.zeros((B, 1), dtype=torch.int32)
    backup(tree, root, data["root_value_k"])  # the root's value, backed up once (as mctx does)
    priors, values = data["sim_prior_k"], data["sim_value_k"]
    for s in range(SIMS):
        leaf_node, leaf_action = select(tree, 1, "puct", C1, C2)
        new = expand(tree, leaf_node, leaf_action, priors[s])
        backup(tree, new, values[s])
    return tree


def run_batched_model_in_loop(backend, seed: int = SEED) -> BatchedTree:
    """Same search, the trivial model's torch ops inside the loop (seeded torch.Generator)."""
    select, expand, backup = backend.select, backend.expand, backend.backup
    g = torch.Generator().manual_seed(seed)
    root_prior = torch.softmax(torch.randn(B, A, generator=g), -1)
    tree = BatchedTree.empty(B, SIMS + 1, A, root_prior=root_prior)
    backup(tree, torch.zeros((B, 1), dtype=torch.int32), torch.rand(B, 1, generator=g) * 2 - 1)
    for _ in range(SIMS):
        leaf_node, leaf_action = select(tree, 1, "puct", C1, C2)
        prior = torch.softmax(torch.randn(B, 1, A, generator=g), -1)
        value = torch.rand(B, 1, generator=g) * 2 - 1
        new = expand(tree, leaf_node, leaf_action, prior)
        backup(tree, new, value)
    return tree


def profile_batched(backend, data, repeats: int = 5) -> dict:
    """Per-call cost of each piece of the loop, in process CPU time (robust to shared cores).

    Medians over runs of the per-run totals; *_per_call_us = total / SIMS.
    """
    import statistics

    pc = time.process_time
    parts = {k: [] for k in ("alloc", "root_backup", "select", "expand", "backup", "loop_total")}
    for _ in range(repeats + 1):
        t = dict.fromkeys(parts, 0.0)
        t0 = pc()
        tree = BatchedTree.empty(B, SIMS + 1, A, root_prior=data["root_prior"])
        t1 = pc()
        backend.backup(tree, torch.zeros((B, 1), dtype=torch.int32), data["root_value_k"])
        t2 = pc()
        t["alloc"], t["root_backup"] = t1 - t0, t2 - t1
        for s in range(SIMS):
            a = pc()
            ln, la = backend.select(tree, 1, "puct", C1, C2)
            b = pc()
            new = backend.expand(tree, ln, la, data["sim_prior_k"][s])
            c = pc()
            backend.backup(tree, new, data["sim_value_k"][s])
            d = pc()
            t["select"] += b - a
            t["expand"] += c - b
            t["backup"] += d - c
        t["loop_total"] = pc() - t0
        for k in parts:
            parts[k].append(t[k])
    med = {k: statistics.median(v[1:]) for k, v in parts.items()}
    out = {f"{k}_total_s": v for k, v in med.items()}
    for k in ("select", "expand", "backup"):
        out[f"{k}_per_call_us"] = med[k] / SIMS * 1e6
    out["mean_depth_of_new_nodes"] = float(tree.depth[:, 1:].float().mean())
    out["max_depth"] = int(tree.depth.max())
    if getattr(backend, "name", "") == "cpp":
        try:  # uses the backend's internals (its tree-view cache and the _C module)
            out.update(profile_cpp_raw(backend, data, repeats))
        except Exception as exc:  # the wrapper's internals changed: say so, keep the rest
            out["raw_C_error"] = f"{type(exc).__name__}: {exc}"
    # The trivial model's torch ops, if they ran inside the loop (per simulation).
    g = torch.Generator().manual_seed(1)
    n = 2000
    t0 = pc()
    for _ in range(n):
        torch.softmax(torch.randn(B, 1, A, generator=g), -1)
        torch.rand(B, 1, generator=g) * 2 - 1
    out["model_torch_ops_per_sim_us"] = (pc() - t0) / n * 1e6
    # Floor of any op call: allocating the [B, K] int32 outputs an op must return.
    t0 = pc()
    for _ in range(n):
        torch.empty((B, 1), dtype=torch.int32)
    out["torch_empty_per_call_us"] = (pc() - t0) / n * 1e6
    return out


def profile_cpp_raw(cpp, data, repeats: int) -> dict:
    """The same loop calling lrm_engine._C directly (tree view and output buffers made once):
    kernel + pybind11 cost; the difference to the backend's methods is the Python wrapper."""
    import statistics

    from lrm_engine import _C

    pc = time.process_time
    sel_out = torch.empty((2, B, 1), dtype=torch.int32)
    p_node = sel_out.data_ptr()
    p_act = p_node + 4 * B
    new = torch.empty((B, 1), dtype=torch.int32)
    p_new = new.data_ptr()
    pri = [t.data_ptr() for t in data["sim_prior_k"]]
    val = [t.data_ptr() for t in data["sim_value_k"]]
    root = torch.zeros((B, 1), dtype=torch.int32)  # keep the tensors alive while C reads them
    parts = {k: [] for k in ("select", "expand", "backup")}
    for _ in range(repeats + 1):
        tree = BatchedTree.empty(B, SIMS + 1, A, root_prior=data["root_prior"])
        view = cpp._view(tree)
        _C.backup(view, 1, root.data_ptr(), data["root_value_k"].data_ptr(), 0, 1.0)
        t = dict.fromkeys(parts, 0.0)
        for s in range(SIMS):
            a = pc()
            _C.select(view, 1, 0, C1, C2, math.sqrt(2.0), 1.0, p_node, p_act)
            b = pc()
            _C.expand(view, 1, p_node, p_act, pri[s], 0, p_new)
            c = pc()
            _C.backup(view, 1, p_new, val[s], 0, 1.0)
            d = pc()
            t["select"] += b - a
            t["expand"] += c - b
            t["backup"] += d - c
        for k in parts:
            parts[k].append(t[k])
    out = {}
    for k, v in parts.items():
        out[f"raw_C_{k}_per_call_us"] = statistics.median(v[1:]) / SIMS * 1e6
    # Floor: a pybind11 call that does nothing useful (backup of K=0 leaves).
    n = 5000
    t0 = pc()
    for _ in range(n):
        _C.backup(view, 0, p_new, val[0], 0, 1.0)
    out["pybind_call_floor_us"] = (pc() - t0) / n * 1e6
    return out


def trees_equal(x: BatchedTree, y: BatchedTree) -> list[str]:
    """Names of the fields that differ (NaN == NaN)."""
    bad = []
    for name, t in x.tensors().items():
        u = getattr(y, name)
        if t.shape != u.shape or t.dtype != u.dtype:
            bad.append(name)
            continue
        if t.is_floating_point():
            same = (t == u) | (torch.isnan(t) & torch.isnan(u))
            if not bool(same.all()):
                bad.append(name)
        elif not torch.equal(t, u):
            bad.append(name)
    return bad


# ----------------------------------------------------------------------------- (c): python tree
# OpenR-style variant (extra), written the way OpenR writes AlphaZero-style MCTS (reason/guided_search/tree.py:
# Node with a dict of children, properties, `_expand_leaf_node` creating one child Node per action
# with its prior, `_select_child` looping over children.items() with a per-child `_ucb_score`,
# recursive `update_recursive`), with the score in mctx's form (min-max normalised q-values over
# the node and its visited children, unvisited q = 0) so it searches the same trees as ours.
class Node:
    def __init__(self, parent=None, prior_p=1.0, action=None):
        self._parent = parent
        self._children = {}  # action -> Node
        self._visit_count = 0
        self._value_sum = 0.0
        self.prior_p = prior_p
        self.last_action = action

    @property
    def value(self):
        if self._visit_count == 0:
            return 0.0
        return self._value_sum / self._visit_count

    @property
    def visit_count(self):
        return self._visit_count

    @property
    def children(self):
        return self._children

    @property
    def parent(self):
        return self._parent

    def is_leaf(self):
        return self._children == {}

    def is_root(self):
        return self._parent is None

    def update(self, value):
        self._visit_count += 1
        self._value_sum += value

    def update_recursive(self, leaf_value):
        self.update(leaf_value)
        if self.is_root():
            return
        self._parent.update_recursive(leaf_value)


class PythonMCTS:
    """One search tree; the trivial model's numbers for every simulation are passed in."""

    def __init__(self, pb_c_init=C1, pb_c_base=C2):
        self._pb_c_init = pb_c_init
        self._pb_c_base = pb_c_base

    def _expand_leaf_node(self, node, action_priors):
        for action, prob in enumerate(action_priors):
            node.children[action] = Node(parent=node, prior_p=prob, action=action)

    def _ucb_score(self, parent, child, lo, scale):
        pb_c = math.log((parent.visit_count + self._pb_c_base + 1) / self._pb_c_base) + self._pb_c_init
        prior_score = child.prior_p * math.sqrt(parent.visit_count) * pb_c / (child.visit_count + 1)
        value_score = (child.value - lo) / scale if child.visit_count > 0 else 0.0
        return value_score + prior_score

    def _select_child(self, node):
        lo = hi = node.value
        for child in node.children.values():
            if child.visit_count > 0:
                lo = min(lo, child.value)
                hi = max(hi, child.value)
        scale = max(hi - lo, 1e-8)
        action, child, best_score = None, None, -math.inf
        for action_tmp, child_tmp in node.children.items():
            score = self._ucb_score(node, child_tmp, lo, scale)
            if score > best_score:  # ties -> first (lowest) action
                best_score, action, child = score, action_tmp, child_tmp
        return action, child

    def search(self, root_prior, root_value, sim_prior, sim_value, b):
        root = Node()
        self._expand_leaf_node(root, root_prior)
        root.update(root_value)
        for s in range(SIMS):
            node = root
            while not node.is_leaf():
                _, node = self._select_child(node)
            self._expand_leaf_node(node, sim_prior[s][b])
            node.update_recursive(sim_value[s][b])
        return root


def run_python_tree(lists):
    root_prior, root_value, sim_prior, sim_value = lists
    mcts = PythonMCTS()
    return [mcts.search(root_prior[b], root_value[b], sim_prior, sim_value, b) for b in range(B)]


# The lean pointer tree (the headline Python baseline): children created lazily on selection
# (like the batched tree and mctx), plain attributes, PUCT inlined in one loop, iterative backup.
# It bounds from below what careful pure Python costs.
class LeanNode:
    __slots__ = ("parent", "action", "priors", "children", "visit_count", "value_sum")

    def __init__(self, parent=None, action=None, priors=None):
        self.parent = parent
        self.action = action
        self.priors = priors  # list of A floats
        self.children = {}  # action -> LeanNode, only the expanded ones
        self.visit_count = 0
        self.value_sum = 0.0


def lean_select_action(node, c1=C1, c2=C2):
    n_visits = node.visit_count
    v = node.value_sum / n_visits if n_visits > 0 else 0.0
    lo = hi = v
    for child in node.children.values():
        if child.visit_count > 0:
            q = child.value_sum / child.visit_count
            if q < lo:
                lo = q
            if q > hi:
                hi = q
    scale = max(hi - lo, 1e-8)
    sqrt_n = math.sqrt(n_visits)
    pb_c = c1 + math.log((n_visits + c2 + 1.0) / c2)
    children = node.children
    best_action, best_score = -1, -math.inf
    for action, prior in enumerate(node.priors):
        child = children.get(action)
        if child is not None and child.visit_count > 0:
            visits = child.visit_count
            score = (child.value_sum / visits - lo) / scale + prior * sqrt_n * pb_c / (visits + 1.0)
        else:
            score = prior * sqrt_n * pb_c
        if score > best_score:
            best_action, best_score = action, score
    return best_action


def lean_search(root_prior, root_value, sim_prior, sim_value, b):
    root = LeanNode(priors=root_prior)
    root.visit_count = 1
    root.value_sum = root_value
    for s in range(SIMS):
        node = root
        while True:
            action = lean_select_action(node)
            child = node.children.get(action)
            if child is None:
                break
            node = child
        leaf = LeanNode(node, action, sim_prior[s][b])
        node.children[action] = leaf
        value = sim_value[s][b]
        n = leaf
        while n is not None:
            n.visit_count += 1
            n.value_sum += value
            n = n.parent
    return root


def run_python_tree_lean(lists):
    root_prior, root_value, sim_prior, sim_value = lists
    return [lean_search(root_prior[b], root_value[b], sim_prior, sim_value, b) for b in range(B)]


def python_tree_matches(roots, tree: BatchedTree) -> int:
    """How many of the B python trees equal the batched tree (structure, visits, values ~1e-4).

    Only visited python nodes count (the OpenR style also holds unvisited placeholder children).
    """
    parent = tree.parent.tolist()
    action = tree.action_from_parent.tolist()
    visits = tree.visit_count.tolist()
    vsum = tree.value_sum.tolist()
    num = tree.num_nodes.tolist()

    def visited_children(n):
        ch = n._children if hasattr(n, "_children") else n.children
        return {a: c for a, c in ch.items() if (c._visit_count if hasattr(c, "_visit_count") else c.visit_count) > 0}

    def stats(n):
        if hasattr(n, "_visit_count"):
            return n._visit_count, n._value_sum
        return n.visit_count, n.value_sum

    ok = 0
    for b, root in enumerate(roots):
        # The batched tree numbers nodes in creation order: slot i is child action[i] of slot parent[i].
        nodes = [root]
        good = num[b] == SIMS + 1
        for i in range(1, num[b]):
            p = parent[b][i]
            if not good or p < 0 or p >= i:
                good = False
                break
            ch = visited_children(nodes[p]).get(action[b][i])
            if ch is None:
                good = False
                break
            nodes.append(ch)
        if good:
            good = sum(len(visited_children(n)) for n in nodes) == SIMS and all(
                stats(n)[0] == visits[b][i] and abs(stats(n)[1] - vsum[b][i]) <= 1e-4
                for i, n in enumerate(nodes)
            )
        ok += good
    return ok


# ----------------------------------------------------------------------------- (d): mctx
def setup_mctx(data):
    import jax
    import jax.numpy as jnp
    import mctx

    def recurrent_fn(params, rng_key, action, embedding):
        k1, k2 = jax.random.split(rng_key)
        out = mctx.RecurrentFnOutput(
            reward=jnp.zeros((B,), jnp.float32),
            discount=jnp.ones((B,), jnp.float32),  # undiscounted, single-player: like ours
            prior_logits=jax.random.normal(k1, (B, A), jnp.float32),
            value=jax.random.uniform(k2, (B,), jnp.float32, minval=-1.0, maxval=1.0),
        )
        return out, embedding

    @jax.jit
    def policy(rng_key, root_logits, root_value):
        root = mctx.RootFnOutput(
            prior_logits=root_logits, value=root_value, embedding=jnp.zeros((B,), jnp.int32)
        )
        return mctx.muzero_policy(
            params=(),
            rng_key=rng_key,
            root=root,
            recurrent_fn=recurrent_fn,
            num_simulations=SIMS,
            qtransform=mctx.qtransform_by_parent_and_siblings,  # muzero_policy's default
            dirichlet_fraction=0.0,  # no root noise: same root priors as the other variants
            pb_c_init=C1,
            pb_c_base=C2,
        )

    @jax.jit
    def model_only(rng_key):
        """The trivial model's draws alone: SIMS x recurrent_fn's random numbers."""

        def body(i, carry):
            key, acc = carry
            key, sub = jax.random.split(key)
            o, _ = recurrent_fn((), sub, jnp.zeros((B,), jnp.int32), jnp.zeros((B,), jnp.int32))
            return key, acc + o.prior_logits.sum() + o.value.sum()

        return jax.lax.fori_loop(0, SIMS, body, (rng_key, jnp.float32(0)))[1]

    key = jax.random.PRNGKey(SEED)
    root_logits = jnp.asarray(data["root_logits"].numpy())
    root_value = jnp.asarray(data["root_value"].numpy())

    def run():
        return policy(key, root_logits, root_value)

    def sync(out):
        jax.block_until_ready(out)

    t0 = time.perf_counter()
    out = run()
    sync(out)
    compile_s = time.perf_counter() - t0
    visits = int(out.search_tree.node_visits[:, 0].sum())
    assert visits == B * (SIMS + 1), visits  # every root: its own visit + SIMS backups
    return run, sync, lambda: model_only(key), compile_s, jax.__version__, mctx.__version__


# ----------------------------------------------------------------------------- main
def measure(batch: int) -> dict:
    """Every variant at B = batch trees: agreement checks, then interleaved timings."""
    global B
    B = batch
    data = make_model_data()
    ref = get_backend("reference")
    cpp = get_backend("cpp") if "cpp" in available_backends() else None

    # --- agreement, outside timing
    ref_tree = run_batched(ref, data)
    assert int(ref_tree.visit_count[:, 0].min()) == SIMS + 1
    agreement = {"cpp_equals_reference": None}
    if cpp is not None:
        cpp_tree = run_batched(cpp, data)
        diff = trees_equal(cpp_tree, ref_tree)
        assert not diff, f"B={B}: cpp and reference trees differ in fields: {diff}"
        agreement["cpp_equals_reference"] = True
        log(f"# B={B} agreement: cpp tree == reference tree (all fields, bitwise)")
    lists = (
        data["root_prior"].tolist(),
        data["root_value"].tolist(),
        data["sim_prior"].tolist(),
        data["sim_value"].tolist(),
    )
    n_lean = python_tree_matches(run_python_tree_lean(lists), ref_tree)
    agreement["python_tree_equal_trees"] = f"{n_lean}/{B}"
    n_openr = python_tree_matches(run_python_tree(lists), ref_tree)
    agreement["python_tree_openr_equal_trees"] = f"{n_openr}/{B}"
    log(f"# B={B} agreement: python tree == reference tree for {n_lean}/{B} trees (OpenR style: {n_openr}/{B})")

    # --- timings: every variant warmed up, then timed round-robin (one run of each per round)
    # so that load from other processes on the shared cores falls on all of them alike.
    extra: dict = {}
    versions = {"torch": torch.__version__}
    cases: dict = {}
    if cpp is not None:
        cases["cpp"] = (lambda: run_batched(cpp, data), None)
        cases["cpp_model_in_loop"] = (lambda: run_batched_model_in_loop(cpp), None)
    cases["reference"] = (lambda: run_batched(ref, data), None)
    cases["python_tree"] = (lambda: run_python_tree_lean(lists), None)
    cases["python_tree_openr"] = (lambda: run_python_tree(lists), None)
    if not ARGS.no_mctx:
        try:
            run, sync, model_only, compile_s, jv, mv = setup_mctx(data)
            versions.update(jax=jv, mctx=mv)
            extra["mctx_compile_s"] = compile_s
            log(f"# B={B} mctx compiled in {compile_s:.1f} s (excluded from the timings)")
            cases["mctx"] = (run, sync)
            cases["mctx_model_only"] = (model_only, sync)
        except ImportError as exc:
            log(f"# mctx skipped: {exc} (pip install -e .[bench])")
    res = _common.time_interleaved(cases, ARGS.repeats, ARGS.warmup)
    notes = {
        "cpp_model_in_loop": "cpp with the trivial model's torch ops inside the loop",
        "python_tree_openr": "OpenR-style pure-Python tree (all children at expansion, recursive backup)",
        "mctx_model_only": "mctx's recurrent_fn random draws alone (part of mctx's time)",
    }
    for name, r in res.items():
        log(
            f"# B={B} {name:18s} median {r['median_s'] * 1e3:9.3f} ms  (cpu {r['median_cpu_s'] * 1e3:9.3f} ms)  "
            f"runs {[round(x * 1e3, 2) for x in r['runs_s']]}  {notes.get(name, '')}"
        )
        if name in notes:
            extra[f"{name}_s"] = r["median_s"]

    if ARGS.profile:
        for name, be in (("cpp", cpp), ("reference", ref)):
            if be is None:
                continue
            prof = profile_batched(be, data, repeats=3 if name == "reference" else 7)
            extra[f"profile_{name}"] = prof
            log(f"# B={B} profile {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in prof.items()))

    names = ("cpp", "reference", "python_tree", "python_tree_openr", "mctx")
    med = {k: (res[k]["median_s"] if k in res else None) for k in names}
    med_cpu = {k: (res[k]["median_cpu_s"] if k in res else None) for k in names}
    best = {k: (res[k]["min_s"] if k in res else None) for k in names}

    def ratio(other, m=med):
        if m["cpp"] is None or m[other] is None:
            return None
        return m[other] / m["cpp"]

    def ratios(m):
        return {"speedup_vs_mctx": ratio("mctx", m), "speedup_vs_python_tree": ratio("python_tree", m),
                "speedup_vs_python_tree_openr": ratio("python_tree_openr", m),
                "speedup_vs_reference": ratio("reference", m)}

    return {"batch_trees": B, "median_s": med, "ratios": ratios(med), "median_cpu_s": med_cpu,
            "ratios_cpu": ratios(med_cpu), "min_s": best, "ratios_min": ratios(best),
            "agreement": agreement, "extra": extra, "versions": versions}


def main() -> int:
    t_start = time.perf_counter()
    backends = available_backends()
    have_cpp = "cpp" in backends
    batches = [int(x) for x in ARGS.batch.split(",") if x.strip()]
    log(f"# tree_ops: B={batches} A={A} sims={SIMS}; backends available: {backends}")
    if not have_cpp:
        log(f"# cpp backend MISSING: {backend_error('cpp')}")
    sweep = [measure(b) for b in batches]
    head = sweep[-1]
    record = {
        "bench": "tree_ops",
        "workload": {
            "batch_trees": head["batch_trees"],
            "batch_trees_swept": batches,
            "num_actions": A,
            "simulations": SIMS,
            "leaves_per_tree_per_sim": 1,
            "rule": "puct",
            "c1": C1,
            "c2": C2,
            "qtransform": "qtransform_by_parent_and_siblings",
            "discount": 1.0,
            "model": "seeded random prior logits (softmax) and values in [-1,1]; "
            "pre-generated before timing for cpp/reference/python trees, jax.random inside mctx",
            "node_slots": SIMS + 1,
            "repeats": ARGS.repeats,
            "threads": THREADS,
            "python_tree": "lean pointer tree (lazy children, __slots__, inlined PUCT); "
                           "python_tree_openr: OpenR-style tree",
        },
        # The largest B's figures; `sweep` holds each B's.
        "median_s": head["median_s"],
        "ratios": head["ratios"],
        "targets": {"speedup_vs_mctx": 20, "speedup_vs_python_tree": 100},
        # The same figures as process CPU time and as the fastest run: when other work shares
        # the cores, wall-clock medians measure the load as much as the code.
        "median_cpu_s": head["median_cpu_s"],
        "ratios_cpu": head["ratios_cpu"],
        "min_s": head["min_s"],
        "ratios_min": head["ratios_min"],
        "sweep": [{k: r[k] for k in ("batch_trees", "median_s", "ratios", "ratios_cpu", "agreement")}
                  for r in sweep],
        "load_average": _common.load_average(),
        "agreement": head["agreement"],
        "extra": head["extra"],
        "versions": head["versions"],
        "machine": _common.machine(),
        "date": _common.utc_now(),
        "cpp_missing": None if have_cpp else backend_error("cpp"),
        "bench_wall_s": round(time.perf_counter() - t_start, 1),
    }
    _common.emit(record)
    return 0 if have_cpp else 1


if __name__ == "__main__":
    sys.exit(main())
