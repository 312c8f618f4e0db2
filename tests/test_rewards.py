"""Incremental PRMs (lrm_engine.rewards): scores equal full-path re-encoding, the KV budget
(evictions + transparent recompute) does not change them, counters, the three kinds, the
re-tokenizing path, the plugin factories and the lazy default path."""

from __future__ import annotations

import warnings

import pytest
import torch

from lrm_engine.core.interfaces import StepConvention
from lrm_engine.core.tree import BatchedTree
from lrm_engine.models import SamplingConfig, load_causal_lm, save_tiny_llama
from lrm_engine.models.hf_policy import HFPolicy
from lrm_engine.rewards import TokenPRM, TwoClassPRM, ValueHeadPRM

CHARS = "ab+-=\n "  # a small vocabulary: the delimiter is sampled often
PROMPTS = ["ab=", "a+b-a=", "b b"]
STEP = StepConvention(delimiter="\n", answer_prefix="==")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rewards")
    pol = save_tiny_llama(root / "policy", chars=CHARS, hidden_size=64, initializer_range=0.2)
    prm = save_tiny_llama(root / "prm", seed=1, chars=CHARS, hidden_size=64, initializer_range=0.2)
    try:
        yield {"policy": pol, "prm": prm, "root": root}
    finally:
        torch.set_num_threads(threads)


def grow(pol, prms, depth=3, k=3, seed=0):
    """Expand a tree level by level; after every expansion score the children with every PRM.
    Returns (tree, {prm index: {(b, n): score}})."""
    tree = BatchedTree.empty(len(PROMPTS), 256, k)
    pol.init_roots(tree, PROMPTS)
    scores = [dict() for _ in prms]
    frontier = [(b, 0) for b in range(len(PROMPTS))]
    samp = SamplingConfig(temperature=1.0, seed=seed)
    for d in range(depth):
        res = pol.expand(tree, frontier, k if d == 0 else 2, samp)
        pairs = [(b, int(c)) for (b, _), row in zip(res.nodes.tolist(), res.children.tolist()) for c in row]
        for i, prm in enumerate(prms):
            s = prm.score(tree, torch.tensor(pairs), pol)
            assert s.dtype == torch.float32 and s.shape == (len(pairs),)
            scores[i].update({p: float(x) for p, x in zip(pairs, s.tolist())})
        frontier = [p for p in pairs if not bool(tree.terminal[p])][:5]
        if not frontier:
            break
    return tree, scores


def reference_tokens(pol, tree, b, n, tok):
    """Prompt + each step (EOS dropped, the delimiter appended where the step lacks it)."""
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    runs = []
    for m in tree.path_to_root(b, n)[::-1]:
        t = pol.arena(tree).node_tokens(tree, b, m).tolist()
        if m != 0:
            while t and t[-1] == tok.eos_token_id:
                t = t[:-1]
            if t[-len(nl):] != nl:
                t = t + nl
        runs.append(t)
    return runs


def full_logit_scores(model, runs, good, bad):
    """From scratch, full vocabulary: softmax over [good, bad] of the LM logits at each step end."""
    ids = torch.tensor([x for r in runs for x in r])[None]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    ends, o = [], 0
    for r in runs:
        o += len(r)
        ends.append(o - 1)
    z = logits[ends[1:]][:, [good, bad]]
    return torch.softmax(z, -1)[:, 0]


def test_prm_token_incremental_equals_full_forward_and_budget(dirs):
    pmodel, ptok = load_causal_lm(dirs["policy"])
    rmodel, rtok = load_causal_lm(dirs["prm"])
    pol = HFPolicy(pmodel, ptok, step=STEP, max_step_tokens=4)
    big = TokenPRM(rmodel, rtok, kv_budget_mb=64)
    tiny = TokenPRM(rmodel, rtok, kv_budget_mb=0.002)  # ~2 KB: a few segments at most
    tree, (s_big, s_tiny) = grow(pol, [big, tiny])
    assert len(s_big) >= 9
    good, bad = big.good_token_id, big.bad_token_id
    worst = 0.0
    for (b, n), s in s_big.items():
        ref = full_logit_scores(rmodel, reference_tokens(pol, tree, b, n, rtok), good, bad)
        worst = max(worst, abs(float(ref[-1]) - s))
    assert worst < 1e-5, worst
    assert max(abs(s_big[p] - s_tiny[p]) for p in s_big) < 1e-5
    assert tiny.counters.evictions > 0 and tiny.counters.tokens_recomputed > 0
    assert big.counters.evictions == 0 and big.counters.tokens_recomputed == 0
    assert big.counters.tokens_reused > 0
    # Each scored step computed once (+ the roots): exactly the tokens of the distinct segments.
    seg_tokens = sum(len(reference_tokens(pol, tree, b, n, rtok)[-1]) for b, n in s_big)
    roots = sum(len(pol.arena(tree).node_tokens(tree, b, 0)) for b in range(len(PROMPTS)))
    assert big.counters.tokens_computed == seg_tokens + roots
    assert big.counters.bytes_resident_peak > 0 and big.counters.forward_calls >= 4
    # Scoring again costs nothing and returns the same scores.
    before = big.counters.tokens_computed
    pairs = torch.tensor(list(s_big))
    again = big.score(tree, pairs, pol)
    assert again.tolist() == pytest.approx([s_big[tuple(p)] for p in pairs.tolist()])
    assert big.counters.tokens_computed == before
    # scores are probabilities
    assert all(0.0 <= s <= 1.0 for s in s_big.values())


def test_explicit_step_tag_and_score_full(dirs):
    pmodel, ptok = load_causal_lm(dirs["policy"])
    rmodel, rtok = load_causal_lm(dirs["prm"])
    pol = HFPolicy(pmodel, ptok, step=STEP, max_step_tokens=3)
    prm = TokenPRM(rmodel, rtok, step_tag=" ", good_token="a", bad_token="b", kv_budget_mb=0.001)
    tree, (s,) = grow(pol, [prm], depth=2)
    for (b, n), v in s.items():
        full = prm.score_full([prm.path_segments(tree, b, n, pol)])[0]
        assert abs(float(full[-1]) - v) < 1e-5
        assert prm.path_segments(tree, b, n, pol)[-1][-1] == rtok(" ", add_special_tokens=False)["input_ids"][0]


@pytest.mark.parametrize("kind", ["prm_head", "value_head"])
def test_classifier_heads_equal_full_forward(dirs, kind, tmp_path):
    from transformers import LlamaConfig, LlamaForTokenClassification

    from lrm_engine.rewards.loading import load_token_classifier

    pmodel, ptok = load_causal_lm(dirs["policy"])
    labels = 2 if kind == "prm_head" else 1
    cfg = LlamaConfig(vocab_size=len(ptok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=labels, pad_token_id=0,
                      initializer_range=0.2)
    torch.manual_seed(3)
    LlamaForTokenClassification(cfg).save_pretrained(tmp_path)
    ptok.save_pretrained(tmp_path)
    model, tok = load_token_classifier(tmp_path)
    cls = TwoClassPRM if kind == "prm_head" else ValueHeadPRM
    pol = HFPolicy(pmodel, ptok, step=STEP, max_step_tokens=4)
    prm = cls(model, tok, kv_budget_mb=0.002)
    tree, (s,) = grow(pol, [prm], depth=3)
    for (b, n), v in s.items():
        runs = reference_tokens(pol, tree, b, n, tok)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([x for r in runs for x in r])[None]).logits[0, -1]
        ref = torch.softmax(logits, -1)[1] if kind == "prm_head" else torch.sigmoid(logits[0])
        assert abs(float(ref) - v) < 1e-5
    assert prm.counters.evictions > 0 and prm.counters.tokens_reused > 0


def test_different_tokenizer_re_tokenizes(dirs, tmp_path):
    """A PRM with another vocabulary re-encodes each step's text (the slower path)."""
    pmodel, ptok = load_causal_lm(dirs["policy"])
    d = save_tiny_llama(tmp_path / "prm_ascii", seed=2, hidden_size=64, initializer_range=0.2)  # full ASCII
    rmodel, rtok = load_causal_lm(d)
    pol = HFPolicy(pmodel, ptok, step=STEP, max_step_tokens=4)
    prm = TokenPRM(rmodel, rtok, kv_budget_mb=64, policy_tokenizer=ptok)
    assert not prm.tokens.shares(ptok)
    tree, (s,) = grow(pol, [prm], depth=2)
    good, bad = prm.good_token_id, prm.bad_token_id
    for (b, n), v in s.items():
        path = tree.path_to_root(b, n)[::-1]
        runs = [rtok(PROMPTS[b])["input_ids"]]
        for m in path[1:]:
            text = ptok.decode(pol.arena(tree).node_tokens(tree, b, m).tolist(), skip_special_tokens=True)
            if not text.endswith("\n"):
                text += "\n"
            runs.append(rtok(text, add_special_tokens=False)["input_ids"])
        ref = full_logit_scores(rmodel, runs, good, bad)
        assert abs(float(ref[-1]) - v) < 1e-5


def test_beam_search_through_context_and_factories(dirs):
    from lrm_builtin.search.beam import BeamSearch

    from lrm_engine.core.engine import SearchContext
    from lrm_engine.core.interfaces import Problem
    from lrm_engine.rewards.factories import make_prm_token

    pmodel, ptok = load_causal_lm(dirs["policy"])
    pol = HFPolicy(pmodel, ptok, step=STEP, max_step_tokens=4)
    prm = make_prm_token(path=str(dirs["prm"]), kv_budget_mb=1)
    ctx = SearchContext(policy=pol, step=STEP, prompt=lambda p: p.question, reward=prm,
                        sampling=SamplingConfig(seed=0), max_steps=3)
    probs = [Problem(id=str(i), question=q) for i, q in enumerate(PROMPTS)]
    out = BeamSearch(n=4, beam_width=2).run(ctx, probs)
    assert len(out) == 3
    c = ctx.counters()
    assert c["reward_tokens_computed"] > 0 and c["reward_tokens_reused"] > 0


def test_null_path_is_lazy_with_a_clear_error(tmp_path, monkeypatch):
    from lrm_engine.models.loading import ModelLoadError
    from lrm_engine.rewards.factories import make_prm_token

    monkeypatch.setenv("LRM_CACHE", str(tmp_path))
    monkeypatch.delenv("LRM_DEFAULT_PRM", raising=False)
    r = make_prm_token()  # builds without a model
    assert not r.loaded
    with pytest.raises(ModelLoadError, match="lrm run"):
        r.score(None, torch.zeros(1, 2, dtype=torch.long), None)


def full_min_token_prob(model, runs, tag_len):
    """From scratch, full vocabulary: per step, the smallest p(token | prefix) over the step's
    tokens before its trailing tag, its first included; a step that is only the tag (an empty
    step) keeps it: it is scored by the probability of emitting the tag at once."""
    ids = [x for r in runs for x in r]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor(ids)[None]).logits[0].double(), -1)
    out, start = [], len(runs[0])
    for r in runs[1:]:
        stop = start + len(r) - (tag_len if len(r) > tag_len else 0)
        vals = [float(logp[t - 1, ids[t]]) for t in range(start, stop)]
        out.append(min(vals) if vals else 0.0)
        start += len(r)
    return torch.tensor(out).exp()


@pytest.mark.parametrize("step_tag", [None, " "])
def test_likelihood_readout_equals_full_forward(dirs, step_tag):
    pmodel, ptok = load_causal_lm(dirs["policy"])
    rmodel, rtok = load_causal_lm(dirs["prm"])
    pol = HFPolicy(pmodel, ptok, step=STEP, max_step_tokens=5)
    prm = TokenPRM(rmodel, rtok, readout="likelihood", step_tag=step_tag, kv_budget_mb=0.002)
    tree, (s,) = grow(pol, [prm], depth=3)
    assert len(s) >= 9
    tag_len = 1  # "\n" (the delimiter, part of delimiter-ended steps) or " " (appended)
    worst, below_one = 0.0, 0
    for (b, n), v in s.items():
        runs = [t.tolist() for t in prm.path_segments(tree, b, n, pol)]
        ref = full_min_token_prob(rmodel, runs, tag_len)
        worst = max(worst, abs(float(ref[-1]) - v))
        below_one += v < 0.999
        full = prm.score_full([prm.path_segments(tree, b, n, pol)])[0]
        assert torch.allclose(full.double(), ref.double(), atol=1e-5)
    assert worst < 1e-5, worst
    assert below_one >= len(s) // 2  # a random PRM doubts most steps: the read-out is not constant
    with pytest.raises(ValueError, match="readout must be one of"):
        TokenPRM(rmodel, rtok, readout="logits")
