"""TreePolicy (the ``tree`` policy): transformers' Llama / Qwen2 / Mistral code with attention and
cache replaced by tree attention over per-node KV segments.

Checked against HF ``generate`` (greedy, prompts of different lengths, steps cut by length and by
a delimiter), against the ``hf`` policy (sampled 2-level trees under a fixed seed: same tokens,
scores, tree and counters), the KV budget (a tiny budget gives the same tokens, with evictions
and recomputation), that attention really runs through the tree-attention op with each distinct
ancestor segment laid out once, and that other architectures are refused naming ``hf``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lrm_engine.core.tree import BatchedTree
from lrm_engine.models import SamplingConfig, char_tokenizer, load_causal_lm, save_tiny_llama
from lrm_engine.models.hf_policy import HFPolicy, PolicyError
from lrm_engine.models.tree_policy import ATTN_IMPLEMENTATION, TreeKVCache, TreePolicy
from lrm_engine.ops import tree_attention as ta

PROMPTS = ["Hello there, world", "ab", "The quick brown fox jumps"]  # different lengths
GREEDY = SamplingConfig(greedy=True)
SAMPLED = SamplingConfig(temperature=1.0, top_k=8, seed=7)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save_tiny(directory, cls_name: str, cfg_name: str, **cfg_kw):
    """A tiny random-init decoder of the given transformers class + the char tokenizer, on disk."""
    import transformers

    tok = char_tokenizer()
    cfg = getattr(transformers, cfg_name)(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, **cfg_kw,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, cls_name)(cfg).eval()
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), hidden_size=64, initializer_range=0.2)
    return load_causal_lm(d)


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    d = _save_tiny(tmp_path_factory.mktemp("tiny_qwen2"), "Qwen2ForCausalLM", "Qwen2Config")
    return load_causal_lm(d)


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory):
    d = _save_tiny(tmp_path_factory.mktemp("tiny_mistral"), "MistralForCausalLM", "MistralConfig",
                   sliding_window=None)
    return load_causal_lm(d)


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


def search(pol, k=3, depth=2, sampling=SAMPLED):
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


def toks(results):
    return [[[x.tolist() for x in row] for row in r.tokens] for r in results]


def assert_same_search(t1, r1, t2, r2, atol=1e-4):
    assert len(r1) == len(r2)
    assert toks(r1) == toks(r2)
    for a, b in zip(r1, r2):
        assert torch.equal(a.nodes, b.nodes) and torch.equal(a.children, b.children)
        assert torch.equal(a.finished, b.finished) and torch.equal(a.length, b.length)
        torch.testing.assert_close(a.logprob_sum, b.logprob_sum, rtol=0, atol=atol)
    for name in ("parent", "depth", "children_index", "terminal", "token_length", "token_offset"):
        assert torch.equal(getattr(t1, name), getattr(t2, name)), name
    torch.testing.assert_close(t1.children_prior, t2.children_prior, rtol=0, atol=atol)


# ----------------------------------------------------------------------------- HF generate
@pytest.mark.parametrize("step_tokens", [1, 3, 4])
def test_llama_greedy_chain_equals_generate(tiny, step_tokens):
    model, tok = tiny
    n_steps = 12 // step_tokens
    ref = hf_greedy(model, tok, PROMPTS, n_steps * step_tokens)
    pol = TreePolicy(model, tok, kv_budget_mb=64, max_step_tokens=step_tokens)
    assert greedy_chain(pol, PROMPTS, n_steps)[2] == ref
    assert model.config._attn_implementation != ATTN_IMPLEMENTATION  # restored after every pass


def test_token_delimiter_cuts_steps_and_keeps_equality(tiny):
    model, tok = tiny
    ref = hf_greedy(model, tok, PROMPTS, 16)
    delim = ref[0][3]
    pol = TreePolicy(model, tok, max_step_tokens=16, stop_token_ids=[delim])
    tree, leaves, got = greedy_chain(pol, PROMPTS, 16)
    assert [r[: len(w)] for r, w in zip(got, ref)] == ref
    assert pol.arena(tree).node_tokens(tree, 0, 1).tolist() == ref[0][:4]


@pytest.mark.parametrize("which", ["tiny_qwen2", "tiny_mistral"])
def test_qwen2_and_mistral_greedy_equal_generate(which, request):
    model, tok = request.getfixturevalue(which)
    ref = hf_greedy(model, tok, PROMPTS, 12)
    pol = TreePolicy(model, tok, max_step_tokens=4)
    assert greedy_chain(pol, PROMPTS, 3)[2] == ref


# ----------------------------------------------------------------------------- hf policy
def test_sampled_two_levels_equal_hf_policy(tiny):
    """k=3 sampled children, 2 levels, fixed seed: same tokens, scores, tree and counters as hf.

    Both policies share the decode loop and consume one generator per call row by row in the
    same order, so equal logits (to ~1e-6) give the same samples.
    """
    model, tok = tiny
    hf, tr = HFPolicy(model, tok, max_step_tokens=4), TreePolicy(model, tok, max_step_tokens=4)
    t1, r1 = search(hf)
    t2, r2 = search(tr)
    assert_same_search(t1, r1, t2, r2)
    for f in ("tokens_computed", "tokens_reused", "forward_calls", "tokens_recomputed", "evictions"):
        assert getattr(hf.counters, f) == getattr(tr.counters, f), f
    assert tr.counters.tokens_reused > 0
    assert hf.text(t1, 0, 4) == tr.text(t2, 0, 4)


def test_qwen2_sampled_equal_hf_policy(tiny_qwen2):
    model, tok = tiny_qwen2
    t1, r1 = search(HFPolicy(model, tok, max_step_tokens=3))
    t2, r2 = search(TreePolicy(model, tok, max_step_tokens=3))
    assert_same_search(t1, r1, t2, r2)


# ----------------------------------------------------------------------------- KV budget
def test_tiny_kv_budget_gives_the_same_tokens(tiny):
    model, tok = tiny
    big = TreePolicy(model, tok, kv_budget_mb=64, max_step_tokens=4)
    small = TreePolicy(model, tok, kv_budget_mb=0.002, max_step_tokens=4)  # ~2 KB: a few segments
    t1, r1 = search(big, k=2, depth=3)
    t2, r2 = search(small, k=2, depth=3)
    assert_same_search(t1, r1, t2, r2, atol=1e-5)
    assert big.counters.evictions == 0 and big.counters.tokens_recomputed == 0
    assert small.counters.evictions > 0 and small.counters.tokens_recomputed > 0
    assert small.store.bytes_resident <= small.store.budget_bytes
    assert big.counters.tokens_reused > 0  # (2 KB keeps almost nothing: small recomputes instead)


def test_counters_after_two_levels_match_the_tree(tiny):
    model, tok = tiny
    pol = TreePolicy(model, tok, kv_budget_mb=64, max_step_tokens=4, eos_token_ids=[])
    k = 3
    tree = BatchedTree.empty(3, 64, k)
    c0 = pol.init_roots(tree, PROMPTS)
    plen = [int(tree.token_length[b, 0]) for b in range(3)]
    assert c0.tokens_computed == sum(plen) and c0.tokens_reused == 0 and c0.forward_calls == 1
    r1 = pol.expand(tree, [(b, 0) for b in range(3)], k, SamplingConfig(seed=1))
    level1 = [(b, int(c)) for b in range(3) for c in r1.children[b].tolist()]
    r2 = pol.expand(tree, level1, k, SamplingConfig(seed=2))
    L = tree.token_length
    assert r1.counters.tokens_reused == sum(plen)
    assert r2.counters.tokens_reused == sum(plen[b] + int(L[b, c]) for b, c in level1)
    gen = sum(int(L[b, c]) for b in range(3) for c in range(1, int(tree.num_nodes[b])))
    assert pol.counters.tokens_computed == sum(plen) + gen
    assert pol.counters.tokens_reused > 0


# ----------------------------------------------------------------------------- mechanism
def test_attention_runs_through_tree_attention_with_shared_segments(tiny, monkeypatch):
    """Every layer of every pass calls the op; a node's segment is laid out once for all k rows."""
    model, tok = tiny
    calls, caches = [], []
    real_op = ta.tree_attention

    def counting(q, k, v, plan, **kw):
        calls.append((q.shape[0], plan.num_groups))
        return real_op(q, k, v, plan, **kw)

    monkeypatch.setattr(ta, "tree_attention", counting)
    pol = TreePolicy(model, tok, max_step_tokens=4, eos_token_ids=[])
    real_build = pol._build_cache

    def capture(prefixes, plen, lmax):
        c = real_build(prefixes, plen, lmax)
        caches.append((c, [len(p) for p in prefixes], [sum(s.length for s in p) for p in prefixes]))
        return c

    monkeypatch.setattr(pol, "_build_cache", capture)
    tree = BatchedTree.empty(3, 64, 4)
    pol.init_roots(tree, PROMPTS)
    res = pol.expand(tree, [(b, 0) for b in range(3)], 4, SamplingConfig(seed=0))
    n_layers = model.config.num_hidden_layers
    assert len(calls) == n_layers * pol.counters.forward_calls
    c, depth, plen = caches[-1]  # the decode cache of the expand call
    assert isinstance(c, TreeKVCache)
    # 3 prompts -> 3 distinct root segments laid out once each, not once per child row (12 rows).
    assert c.shared_tokens == sum(len(tok(p)["input_ids"]) for p in PROMPTS)
    assert sum(not o for o in c.own) == 3 and sum(c.own) == 12
    # Decode steps: one query per live row (q_len 1), 12 groups at the first step.
    assert (12, 12) in calls
    assert int(res.length.sum()) == 12 * 4


def test_unsupported_architectures_are_refused_naming_hf(tmp_path):
    import transformers

    tok = char_tokenizer()
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()
    with pytest.raises(PolicyError, match="`hf` policy"):
        TreePolicy(gpt2, tok)
    mistral_sw = transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, sliding_window=16)).eval()
    with pytest.raises(PolicyError, match="sliding_window=16.*`hf` policy"):
        TreePolicy(mistral_sw, tok)
    qwen_sw = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=16,
        max_window_layers=1)).eval()
    with pytest.raises(PolicyError, match="sliding_attention"):
        TreePolicy(qwen_sw, tok)


def test_from_config_and_name(tmp_path):
    d = save_tiny_llama(tmp_path / "m", hidden_size=32)
    pol = TreePolicy.from_config(d, kv_budget_mb=8, max_step_tokens=3, step_delimiter="\n")
    assert isinstance(pol, TreePolicy) and pol.name == "tree" and pol.max_step_tokens == 3
    assert pol.step.delimiter == "\n" and pol.store.budget_bytes == 8 * 2**20
    tree = BatchedTree.empty(1, 8, 2)
    pol.init_roots(tree, ["hi"])
    res = pol.expand(tree, [(0, 0)], 2, SamplingConfig(seed=0))
    assert res.children.shape == (1, 2) and int(tree.num_nodes[0]) == 3


def test_own_regions_grow_and_match_a_plain_forward(tiny):
    """Token-by-token decoding through one TreeKVCache whose regions start at 1 token and grow."""
    model, tok = tiny
    pol = TreePolicy(model, tok, max_step_tokens=1)
    ids = tok(PROMPTS[2])["input_ids"]
    cache = pol._build_cache([[]], [0], 0)
    cache.min_capacity = 1
    got = []
    for i, t in enumerate(ids):
        lg, cache = pol._forward(torch.tensor([[t]]), torch.ones(1, i + 1, dtype=torch.long),
                                 torch.tensor([[i]]), cache)
        got.append(lg[0, -1])
    assert max(cache.cap.values()) >= len(ids) > 1
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float()
    torch.testing.assert_close(torch.stack(got), ref, rtol=0, atol=1e-4)
    seg = pol._segment(cache, 0, 0, len(ids), None)
    assert seg.length == len(ids) and seg.keys[0].is_contiguous()
