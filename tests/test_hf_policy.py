"""HFPolicy on a tiny random Llama saved to disk: equality with HF generate, padding, the KV
budget (eviction + transparent recompute), counters, seeding and the tree writes."""

from __future__ import annotations

import warnings

import pytest
import torch

from lrm_engine.core.interfaces import StepConvention
from lrm_engine.core.tree import BatchedTree
from lrm_engine.models import SamplingConfig, load_causal_lm, save_tiny_llama
from lrm_engine.models.hf_policy import HFPolicy, PolicyError

PROMPTS = ["Hello there, world", "ab", "The quick brown fox jumps"]  # different lengths
GREEDY = SamplingConfig(greedy=True)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "C++ extension missing" fallback notice
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra OpenMP threads only add contention
    try:
        d = save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), hidden_size=64, initializer_range=0.2)
        yield load_causal_lm(d)
    finally:
        torch.set_num_threads(threads)


def hf_greedy(model, tok, prompts, n_new):
    """Reference: HF generate, batched with left padding, cut after the first EOS."""
    enc = tok(prompts, padding=True, padding_side="left", return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=n_new, pad_token_id=tok.pad_token_id)
    rows = []
    for row in out[:, enc.input_ids.shape[1]:].tolist():
        rows.append(row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
    return rows


def greedy_chain(pol, prompts, n_steps, num_nodes=64):
    """Expand k=1 step by step from every root; return the generated tokens per prompt."""
    B = len(prompts)
    tree = BatchedTree.empty(B, num_nodes, 2)
    pol.init_roots(tree, prompts)
    leaves = [0] * B
    for _ in range(n_steps):
        live = [(b, leaves[b]) for b in range(B) if not bool(tree.terminal[b, leaves[b]])]
        if not live:
            break
        res = pol.expand(tree, live, 1, GREEDY)
        for (b, _), c in zip(res.nodes.tolist(), res.children[:, 0].tolist()):
            leaves[b] = c
    gen = [pol.path_tokens(tree, b, leaves[b])[int(tree.token_length[b, 0]):].tolist() for b in range(B)]
    return tree, leaves, gen


@pytest.mark.parametrize("step_tokens", [1, 3, 4])
def test_greedy_chain_equals_generate(tiny, step_tokens):
    model, tok = tiny
    n_steps = 12 // step_tokens
    ref = hf_greedy(model, tok, PROMPTS, n_steps * step_tokens)
    pol = HFPolicy(model, tok, kv_budget_mb=64, max_step_tokens=step_tokens)
    _, _, got = greedy_chain(pol, PROMPTS, n_steps)
    assert got == ref


def test_single_prompt_equals_unbatched_generate(tiny):
    model, tok = tiny
    ref = hf_greedy(model, tok, PROMPTS[2:], 10)
    pol = HFPolicy(model, tok, max_step_tokens=5)
    assert greedy_chain(pol, PROMPTS[2:], 2)[2] == ref


def test_token_delimiter_cuts_steps_and_keeps_equality(tiny):
    model, tok = tiny
    ref = hf_greedy(model, tok, PROMPTS, 16)
    # A delimiter that occurs in the greedy continuation of the first prompt.
    delim = ref[0][3]
    pol = HFPolicy(model, tok, max_step_tokens=16, stop_token_ids=[delim])
    tree, leaves, got = greedy_chain(pol, PROMPTS, 16)
    cut = [r[: n] for r, n in zip(got, map(len, ref))]
    assert cut == ref
    # Steps end with the delimiter (or are cut by length / EOS).
    for b in range(3):
        for m in tree.path_to_root(b, leaves[b])[:-1]:
            t = pol.arena(tree).node_tokens(tree, b, m).tolist()
            assert t[-1] == delim or len(t) == 16 or t[-1] == tok.eos_token_id
    assert pol.arena(tree).node_tokens(tree, 0, 1).tolist() == ref[0][:4]


def test_string_delimiter_from_step_convention(tiny):
    model, tok = tiny
    ref = hf_greedy(model, tok, PROMPTS[:1], 12)
    ch = tok.decode([ref[0][2]])
    pol = HFPolicy(model, tok, max_step_tokens=12, step=StepConvention(delimiter=ch, answer_prefix="\x00"))
    tree = BatchedTree.empty(1, 8, 1)
    pol.init_roots(tree, PROMPTS[:1])
    res = pol.expand(tree, [(0, 0)], 1, GREEDY)
    assert res.tokens[0][0].tolist() == ref[0][:3]
    assert not bool(res.finished[0, 0])


def test_answer_step_is_terminal(tiny):
    model, tok = tiny
    ref = hf_greedy(model, tok, PROMPTS[:1], 12)
    delim, ans = tok.decode([ref[0][2]]), tok.decode([ref[0][1]])
    pol = HFPolicy(model, tok, max_step_tokens=12, step=StepConvention(delimiter=delim, answer_prefix=ans))
    tree = BatchedTree.empty(1, 8, 2)
    pol.init_roots(tree, PROMPTS[:1])
    res = pol.expand(tree, [(0, 0)], 1, GREEDY)
    assert bool(res.finished[0, 0]) and bool(tree.terminal[0, int(res.children[0, 0])])
    with pytest.raises(PolicyError, match="terminal"):
        pol.expand(tree, [(0, int(res.children[0, 0]))], 1, GREEDY)


def search(pol, k=2, depth=3, sampling=SamplingConfig(temperature=1.0, top_k=8, seed=7)):
    """Expand every non-terminal leaf, k children each, level by level."""
    tree = BatchedTree.empty(len(PROMPTS), 128, k)
    pol.init_roots(tree, PROMPTS)
    frontier = [(b, 0) for b in range(len(PROMPTS))]
    results = []
    for _ in range(depth):
        res = pol.expand(tree, frontier, k, sampling)
        results.append(res)
        frontier = [
            (b, int(c))
            for (b, _), row, fin in zip(res.nodes.tolist(), res.children, res.finished)
            for c, f in zip(row.tolist(), fin.tolist())
            if not f
        ]
        if not frontier:
            break
    return tree, results


def test_tiny_kv_budget_gives_the_same_tokens_and_scores(tiny):
    model, tok = tiny
    big = HFPolicy(model, tok, kv_budget_mb=64, max_step_tokens=4)
    small = HFPolicy(model, tok, kv_budget_mb=0.002, max_step_tokens=4)  # ~2 KB: a few segments
    t1, r1 = search(big)
    t2, r2 = search(small)
    assert len(r1) == len(r2)
    for a, b in zip(r1, r2):
        assert torch.equal(a.nodes, b.nodes) and torch.equal(a.children, b.children)
        assert [[x.tolist() for x in row] for row in a.tokens] == [[x.tolist() for x in row] for row in b.tokens]
        torch.testing.assert_close(a.logprob_sum, b.logprob_sum, rtol=0, atol=1e-5)
        assert torch.equal(a.finished, b.finished)
    for name in ("parent", "depth", "children_index", "terminal", "token_length"):
        assert torch.equal(getattr(t1, name), getattr(t2, name)), name
    torch.testing.assert_close(t1.children_prior, t2.children_prior, rtol=0, atol=1e-5)
    assert big.counters.evictions == 0 and big.counters.tokens_recomputed == 0
    assert small.counters.evictions > 0 and small.counters.tokens_recomputed > 0
    assert small.store.bytes_resident <= small.store.budget_bytes
    assert small.counters.bytes_resident_peak < big.counters.bytes_resident_peak


def test_counters_after_two_levels_match_the_tree(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok, kv_budget_mb=64, max_step_tokens=4, eos_token_ids=[])
    k = 2
    tree = BatchedTree.empty(3, 64, k)
    c0 = pol.init_roots(tree, PROMPTS)
    plen = [int(tree.token_length[b, 0]) for b in range(3)]
    assert c0.tokens_computed == sum(plen) and c0.tokens_reused == 0
    r1 = pol.expand(tree, [(b, 0) for b in range(3)], k, SamplingConfig(seed=1))
    level1 = [(b, int(c)) for b in range(3) for c in r1.children[b].tolist()]
    r2 = pol.expand(tree, level1, k, SamplingConfig(seed=2))
    L = tree.token_length
    # Reused: each expanded node's prefix (prompt + steps down to it) came from the store, once.
    want_reused = sum(plen) + sum(plen[b] + int(L[b, c]) for b, c in level1)
    assert r1.counters.tokens_reused == sum(plen)
    assert r2.counters.tokens_reused == sum(plen[b] + int(L[b, c]) for b, c in level1)
    assert pol.counters.tokens_reused == want_reused
    # Computed: the prompts once, and every generated token once (no EOS here, so all are fed).
    gen = sum(int(L[b, c]) for b in range(3) for c in range(1, int(tree.num_nodes[b])))
    assert pol.counters.tokens_computed == sum(plen) + gen
    assert r1.counters.tokens_computed == int(r1.length.sum())
    assert pol.counters.evictions == 0 and pol.counters.bytes_resident_peak > 0
    assert "reused" in str(pol.counters)


def test_tree_writes_priors_tokens_and_text(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok, max_step_tokens=3, prior="softmax")
    tree = BatchedTree.empty(3, 32, 4)
    pol.init_roots(tree, PROMPTS)
    nodes = torch.tensor([[0], [-1], [0]], dtype=torch.int32)  # select-style [B, M]; tree 1 skipped
    res = pol.expand(tree, nodes, 3, SamplingConfig(seed=3))
    assert res.children_bt.shape == (3, 1, 3)
    assert (res.children_bt[1] == -1).all() and int(tree.num_nodes[1]) == 1
    for p, (b, n) in enumerate(res.nodes.tolist()):
        torch.testing.assert_close(tree.children_prior[b, n, :3], res.logprob_sum[p].softmax(-1))
        assert float(tree.children_prior[b, n, 3]) == BatchedTree.INVALID_PRIOR
        for a in range(3):
            c = int(res.children[p, a])
            assert int(tree.parent[b, c]) == n and int(tree.depth[b, c]) == 1
            assert int(tree.action_from_parent[b, c]) == a
            assert pol.arena(tree).node_tokens(tree, b, c).tolist() == res.tokens[p][a].tolist()
            assert int(res.length[p, a]) == len(res.tokens[p][a]) <= 3
            assert pol.text(tree, b, c) == tok.decode(res.tokens[p][a].tolist(), skip_special_tokens=True)
    # Sum of logprobs is the model's own log-likelihood of the step given the prompt.
    b, n = res.nodes[0].tolist()
    c = int(res.children[0, 0])
    ids = pol.path_tokens(tree, b, c)[None]
    with torch.no_grad():
        lp = model(ids).logits.float().log_softmax(-1)[0]
    P = int(tree.token_length[b, 0])
    want = sum(float(lp[P - 1 + i, int(t)]) for i, t in enumerate(res.tokens[0][0]))
    assert abs(want - float(res.logprob_sum[0, 0])) < 1e-4


def test_seeded_and_reproducible(tiny):
    model, tok = tiny
    s = SamplingConfig(temperature=1.5, top_p=0.9, seed=11)
    a = search(HFPolicy(model, tok, max_step_tokens=4), sampling=s)[1]
    b = search(HFPolicy(model, tok, max_step_tokens=4), sampling=s)[1]
    c = search(HFPolicy(model, tok, max_step_tokens=4), sampling=SamplingConfig(temperature=1.5, seed=12))[1]
    toks = lambda rs: [[[x.tolist() for x in row] for row in r.tokens] for r in rs]
    assert toks(a) == toks(b)
    assert toks(a) != toks(c)


def test_errors_name_the_problem(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok, max_step_tokens=2)
    tree = BatchedTree.empty(1, 8, 2)
    with pytest.raises(PolicyError, match="init_roots"):
        pol.expand(tree, [(0, 0)], 1)
    pol.init_roots(tree, PROMPTS[:1])
    with pytest.raises(PolicyError, match="num_actions"):
        pol.expand(tree, [(0, 0)], 3)
    pol.expand(tree, [(0, 0)], 2)
    with pytest.raises(PolicyError, match="already has children"):
        pol.expand(tree, [(0, 0)], 2)
    with pytest.raises(PolicyError, match="not in use"):
        pol.expand(tree, [(0, 7)], 1)
