"""The reward family beyond the incremental PRMs: Enhanced Borda Count (hand-computed golden
examples), the pairwise A/B-logit judge, the LLM judge's robust verdict parsing, the ORM (terminal
nodes only, equal to a full forward), and the verifier (grades arith; refused inside search, in
Python and by `lrm search`)."""

from __future__ import annotations

import warnings

import pytest
import torch

from lrm_engine.core.engine import SearchContext
from lrm_engine.core.interfaces import Problem, StepConvention
from lrm_engine.rewards.judge import JudgeReward, parse_verdict
from lrm_engine.rewards.pairwise import PairwiseReward, enhanced_borda_count
from lrm_engine.rewards.verifier import ReferenceOnlyRewardError, Verifier
from lrm_engine.testing import ScriptedPolicy, ScriptedWorld

NAN = float("nan")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- EBC golden


def test_ebc_golden_cycle_and_soft_tie_break():
    # Four solutions a, b, c, d; P[i, j] = P(i better than j), P[j, i] = 1 - P[i, j].
    P = torch.tensor([
        #  a     b     c     d
        [NAN, 0.70, 0.40, 0.90],  # a
        [0.30, NAN, 0.80, 0.60],  # b
        [0.60, 0.20, NAN, 0.55],  # c
        [0.10, 0.40, 0.45, NAN],  # d
    ])
    # 1. Local wins (P > 0.5): a>b (.70), a>d (.90), b>c (.80), b>d (.60), c>a (.60), c>d (.55);
    #    d beats nobody. a>b>c>a is a cycle.
    # 2. Closure: a>b & b>c => a>c; b>c & c>a => b>a; c>a & a>b => c>b.
    #    So a, b, c each beat the other two and d.
    # 3. Borda counts: a = 3, b = 3, c = 3, d = 0.
    # 4. Tie a/b/c re-ranked by the soft Borda count sum_j P[i, j]:
    #    a = .70 + .40 + .90 = 2.00, b = .30 + .80 + .60 = 1.70, c = .60 + .20 + .55 = 1.35
    #    (d = .10 + .40 + .45 = 0.95): ranks a 0, b 1, c 2, d 3.
    # 5. Q_g = 1 - rank / 4: a 1.00, b 0.75, c 0.50, d 0.25.
    r = enhanced_borda_count(P)
    A, B, C, D = range(4)
    assert r.wins.tolist() == [[False, True, False, True], [False, False, True, True],
                               [True, False, False, True], [False, False, False, False]]
    assert r.closure.tolist() == [[False, True, True, True], [True, False, True, True],
                                  [True, True, False, True], [False, False, False, False]]
    assert r.borda.tolist() == [3, 3, 3, 0]
    assert r.soft.tolist() == pytest.approx([2.00, 1.70, 1.35, 0.95])
    assert r.rank.tolist() == [0, 1, 2, 3]
    assert r.order.tolist() == [A, B, C, D]
    assert r.quantile.tolist() == pytest.approx([1.00, 0.75, 0.50, 0.25])
    # Without the soft re-ranking the cycle's members share the best rank: Q_g 1, 1, 1, 0.25.
    r2 = enhanced_borda_count(P, tie_break="none")
    assert r2.rank.tolist() == [0, 0, 0, 3]
    assert r2.quantile.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.25])


def test_ebc_golden_transitivity_fills_missing_comparisons():
    # Three solutions; a vs c was never compared (NaN): a beats b (0.8), b beats c (0.7).
    P = torch.tensor([[NAN, 0.8, NAN],
                      [0.2, NAN, 0.7],
                      [NAN, 0.3, NAN]])
    # Plain Borda over direct wins: a = 1, b = 1, c = 0 (a and b tied).
    # Closure adds a>c (a>b, b>c): Borda a = 2, b = 1, c = 0; ranks 0, 1, 2;
    # Q_g = 1 - rank / 3 = 1, 2/3, 1/3.
    r = enhanced_borda_count(P)
    assert r.wins.sum(1).tolist() == [1, 1, 0]
    assert r.closure[0, 2] and not r.closure[2, 0]
    assert r.borda.tolist() == [2, 1, 0]
    assert r.quantile.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])


# ----------------------------------------------------------------------------- pairwise


def _quality(text: str) -> int:
    return int(text.split("q=")[1].split()[0]) if "q=" in text else 0


def scripted_pair_judge(questions, first, second):
    """P(first better): 0.9 / 0.1 by the 'q=<int>' quality in the text, 0.5 when equal; with a
    position bias of +0.05 for the solution shown first (both_orders cancels it)."""
    out = []
    for a, b in zip(first, second):
        qa, qb = _quality(a), _quality(b)
        out.append(min(1.0, (0.9 if qa > qb else 0.1 if qa < qb else 0.5) + 0.05))
    return torch.tensor(out)


def test_pairwise_compare_preference_matrix_and_rank():
    pr = PairwiseReward(scripted_pair_judge)
    sols = ["x q=1", "y q=5", "z q=3"]
    p = pr.compare(["Q"] * 2, sols[:2], sols[1:])
    assert p.tolist() == pytest.approx([0.1, 0.9])  # bias cancelled: (0.15 + 1 - 0.95) / 2
    r = pr.rank("Q", sols)
    assert r.order.tolist() == [1, 2, 0] and r.quantile.tolist() == pytest.approx([1 / 3, 1.0, 2 / 3])
    m = pr.preference_matrix("Q", sols)
    assert torch.allclose(m + m.T, torch.ones(3, 3).fill_diagonal_(NAN), equal_nan=True)


def test_pairwise_lm_judge_reads_two_logits(tmp_path):
    from lrm_engine.models import load_causal_lm, save_tiny_llama
    from lrm_engine.rewards.pairwise import LMPairJudge
    from lrm_engine.rewards.prompted import PromptedLM

    d = save_tiny_llama(tmp_path / "judge", hidden_size=32, initializer_range=0.3)
    model, tok = load_causal_lm(d)
    lm = PromptedLM(model, tok)
    judge = LMPairJudge(lm, template="Q:{question} A:{a} B:{b} ->")
    p = judge(["1+1", "2*3"], ["2", "6"], ["3", "5 and more"])  # two prompts, different lengths
    for i, (q, a, b) in enumerate([("1+1", "2", "3"), ("2*3", "6", "5 and more")]):
        ids = tok(f"Q:{q} A:{a} B:{b} ->")["input_ids"]
        with torch.no_grad():
            z = model(input_ids=torch.tensor([ids])).logits[0, -1]
        ref = torch.softmax(z[[tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")]], -1)[0]
        assert abs(float(ref) - float(p[i])) < 1e-5
    pr = PairwiseReward(judge, lm=lm)
    both = pr.compare(["1+1"], ["2"], ["3"])
    assert 0.0 < float(both) < 1.0 and pr.counters.tokens_computed > 0


# ----------------------------------------------------------------------------- judge


def test_parse_verdict():
    assert parse_verdict(" correct.") == 1.0
    assert parse_verdict("Step 3 is incorrect because 2+2=5") == 0.0
    assert parse_verdict("not correct") == 0.0
    assert parse_verdict("YES") == 1.0 and parse_verdict("wrong!") == 0.0
    for junk in ("", "zzz qqq", "1234", None, 7, "incorrectly-formatted?x"):
        assert parse_verdict(junk) is None


def _world():
    return ScriptedWorld(branching=2, depth=3, logprob=lambda p: -float(p[-1]),
                         score=lambda p: 0.5, answer=lambda p: str(sum(p)))


def test_judge_scores_steps_and_counts_unparseable():
    from lrm_builtin.search.sampled import BestOfNSearch

    seen = []
    replies = iter(["Step 1 is correct", "asdf", "incorrect", "", "correct", "no", "???", "yes"] * 10)

    def gen(prompts):
        seen.extend(prompts)
        return [next(replies) for _ in prompts]

    judge = JudgeReward(gen)
    pol = ScriptedPolicy(_world())
    ctx = SearchContext(policy=pol, step=StepConvention(), prompt=lambda p: p.question, reward=judge,
                        max_steps=3)
    out = BestOfNSearch(n=2, choice="best").run(ctx, [Problem(id="p", question="what?")])
    c = judge.counters_judge
    assert c["judged"] == 6 == len(seen) and c["unparseable"] >= 2
    assert c["correct"] + c["incorrect"] + c["unparseable"] == c["judged"]
    assert len(out) == 1 and out[0].candidates
    # The prompt numbers the steps and asks about the last one.
    deep = [s for s in seen if "Step 3:" in s]
    assert deep and "Is step 3 correct?" in deep[0] and "Step 1: s1c" in deep[0]

    # A generator that raises or returns the wrong count never crashes: all neutral, counted.
    def broken(prompts):
        raise RuntimeError("judge down")

    j2 = JudgeReward(broken, neutral=0.5)
    ctx2 = SearchContext(policy=ScriptedPolicy(_world()), step=StepConvention(), prompt=lambda p: p.question,
                         reward=j2, max_steps=3)
    out2 = BestOfNSearch(n=2, choice="best").run(ctx2, [Problem(id="p", question="q")])
    assert out2[0].score == pytest.approx(0.5) and j2.counters_judge["unparseable"] == 6
    assert j2.counters_judge["errors"] >= 1


def test_judge_with_a_real_tiny_lm(tmp_path):
    from lrm_engine.rewards.family_factories import make_judge
    from lrm_engine.models import save_tiny_llama

    d = save_tiny_llama(tmp_path / "j", hidden_size=32, initializer_range=0.3)
    judge = make_judge(path=str(d), max_new_tokens=3)
    s = judge.judge_texts(["Question: 1+1\nStep 1: 1+1=2\nIs step 1 correct?\nStep 1 is"] * 2)
    assert len(s) == 2 and all(x in (0.0, 0.5, 1.0) for x in s)  # junk text -> neutral, no crash
    assert judge.counters.tokens_computed > 0
    # Batched left-padded greedy decoding = transformers' greedy generate, prompt by prompt.
    lm = judge.resolve().lm if hasattr(judge, "resolve") else judge.lm
    prompts = ["Step 1 is", "Question: 2*3\nIs step 2 correct?\nStep 2 is"]
    got = lm.generate(prompts, 4)
    for p, g in zip(prompts, got):
        ids = lm.tokenizer(p, return_tensors="pt")["input_ids"]
        ref = lm.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert g == lm.tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)


# ----------------------------------------------------------------------------- ORM


def test_orm_scores_only_terminal_nodes_like_a_full_forward(tmp_path):
    from lrm_engine.core.tree import BatchedTree
    from lrm_engine.models import SamplingConfig, load_causal_lm, save_tiny_llama
    from lrm_engine.models.hf_policy import HFPolicy
    from lrm_engine.rewards import TokenPRM
    from lrm_engine.rewards.outcome import OutcomeRM

    chars = "ab+-=\n "
    pol_dir = save_tiny_llama(tmp_path / "pol", chars=chars, hidden_size=32, initializer_range=0.2)
    orm_dir = save_tiny_llama(tmp_path / "orm", seed=1, chars=chars, hidden_size=32, initializer_range=0.2)
    pm, pt = load_causal_lm(pol_dir)
    rm, rt = load_causal_lm(orm_dir)
    pol = HFPolicy(pm, pt, step=StepConvention(delimiter="\n", answer_prefix="=="), max_step_tokens=3)
    orm = OutcomeRM(TokenPRM(rm, rt, kv_budget_mb=64))
    tree = BatchedTree.empty(2, 64, 2)
    pol.init_roots(tree, ["ab=", "b+a"])
    res = pol.expand(tree, [(0, 0), (1, 0)], 2, SamplingConfig(seed=0))
    kids = [(b, int(c)) for (b, _), row in zip(res.nodes.tolist(), res.children.tolist()) for c in row]
    open_ = [p for p in kids if not bool(tree.terminal[p])]
    res2 = pol.expand(tree, open_[:2], 2, SamplingConfig(seed=1))
    leaves = [(b, int(c)) for (b, _), row in zip(res2.nodes.tolist(), res2.children.tolist()) for c in row]
    for p in leaves:  # treat the depth-2 children as finished solutions
        tree.terminal[p] = True
    pairs = torch.tensor(kids + leaves)
    s = orm.score(tree, pairs, pol)
    term = tree.terminal[pairs[:, 0], pairs[:, 1]]
    assert bool(torch.isnan(s[~term]).all()) and not bool(torch.isnan(s[term]).any())
    for (b, n), v in zip(pairs.tolist(), s.tolist()):
        if bool(tree.terminal[b, n]):
            full = orm.inner.score_full([orm.inner.path_segments(tree, b, n, pol)])[0]
            assert abs(float(full[-1]) - v) < 1e-5
    # Siblings share their parent's prefix: it was encoded once and then reused.
    assert orm.counters.tokens_reused > 0
    # A neutral non-terminal score instead of NaN.
    inner_pairs = pairs[~term]
    assert OutcomeRM(orm.inner, nonterminal=0.5).score(tree, inner_pairs, pol).tolist() == [0.5] * len(inner_pairs)


# ----------------------------------------------------------------------------- verifier


def test_verifier_grades_arith_and_math():
    from lrm_engine.plugin_manager import registries

    task = registries()["task"].create("arith", num_train=4, num_test=6)
    exs = list(task.examples("test"))
    v = Verifier(mode="math", answer_prefix=task.step.answer_prefix)
    gold = [task.step.join_steps(e.solution_steps) for e in exs]
    wrong = [task.step.join_steps(list(e.solution_steps[:-1]) + [f"{task.step.answer_prefix}{int(e.reference) + 1}"])
             for e in exs]
    assert v.score(exs, gold).tolist() == [1.0] * len(exs)
    assert v.score(exs, wrong).tolist() == [0.0] * len(exs)
    assert v.score(exs[:1], ["no answer at all"]).tolist() == [0.0]
    # Agrees with the task's own grader.
    assert [bool(x) for x in v.score(exs, gold + wrong[:0])] == [task.grade(e, g) for e, g in zip(exs, gold)]
    # Math equivalence and the boxed fallback.
    from lrm_engine.core.interfaces import Example

    ex = Example(problem=Problem(id="m", question="half?"), reference="\\frac{1}{2}")
    assert v.score([ex, ex, ex], ["Answer: 0.5", "so \\boxed{1/2}", "Answer: 0.6"]).tolist() == [1.0, 1.0, 0.0]
    assert Verifier(mode="exact").score([ex], ["Answer: 1 / 2"]).tolist() == [1.0]


def test_verifier_is_refused_inside_search():
    pol = ScriptedPolicy(_world())
    with pytest.raises(ReferenceOnlyRewardError, match="cannot be used inside search"):
        SearchContext(policy=pol, step=StepConvention(), prompt=lambda p: p.question, reward=Verifier())
    # Called like a search-side reward (tree, pairs, policy): the same refusal.
    with pytest.raises(ReferenceOnlyRewardError, match="carry no reference"):
        Verifier().score(object(), torch.zeros((1, 2)), pol)
    with pytest.raises(ReferenceOnlyRewardError):
        Verifier().score([Problem(id="x", question="1+1")], ["Answer: 2"])


def test_lrm_search_with_verifier_fails_clearly(tmp_path):
    from conftest import run_lrm

    from lrm_engine.models import save_tiny_llama

    pol = save_tiny_llama(tmp_path / "policy", hidden_size=16, num_layers=1)
    r = run_lrm("search", "task=arith", "task.num_test=2", "task.num_train=2", "policy=hf",
                f"policy.path={pol}", "reward=verifier", "search=best_of_n", "search_run.limit=1",
                f"runtime.output_dir={tmp_path / 'out'}", "runtime.progress=false", "kernels=reference",
                env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    assert "reward=verifier" in r.stderr and "cannot be used inside search" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()
