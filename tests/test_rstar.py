"""`rstar` (rStar: MCTS over prompted actions, self-consistency terminal rewards, mutual-consistency
discriminator) on scripted worlds whose policy answers per action prompt, with hand-computed
trees and choices; and end to end through `lrm search` on tiny random models."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lrm_engine.core.engine import SearchContext
from lrm_engine.core.interfaces import Problem, StepConvention
from prompt_policy import PromptPolicy


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def world(prompt: str) -> list[str]:
    """A rephrase prompt gets a rephrasing; a rephrased question is solved right (7), the plain one
    wrong (5)."""
    pid = re.match(r"Problem (\w+)", prompt).group(1)
    if prompt.endswith("Rephrased question: "):
        return [f"what is {pid}?"]
    if "Rephrased question:" in prompt:
        return ["s1", "Answer: 7"]
    return ["t1", "Answer: 5"]


def contrarian(prompt: str) -> list[str]:
    """A discriminator that always completes with 7."""
    return ["Answer: 7"]


def _ctx(solve=world):
    pol = PromptPolicy(solve)
    return pol, SearchContext(policy=pol, step=StepConvention(), prompt=lambda p: f"Problem {p.id}\n",
                              max_steps=6)


def test_rstar_golden_tree_rewards_and_choice():
    """Hand-computed, actions [A2, A5], uct_c 1.4, 3 rollouts:

    1. root: both actions unvisited, A2 first -> node 1 "t1 / Answer: 5", terminal; terminals
       {5: 1} -> reward 1/1 = 1.0; node 1 (1 visit, sum 1.0).
    2. root: A5 unvisited -> node 2 "Rephrased question: what is P?" (not terminal; only A2 valid
       below the root) -> simulation A2 -> node 3 "... s1 / Answer: 7"; terminals {5: 1, 7: 1} ->
       reward 1/2; nodes 2, 3 (1 visit, sum 0.5).
    3. root (3 visits): UCT A2 = 1.0 + 1.4 sqrt(ln 3) > A5 = 0.5 + 1.4 sqrt(ln 3) -> node 1, terminal:
       backed up again with reward 1/2 -> node 1 (2 visits, sum 1.5): Q = 0.75.
    Candidates: node 1 (answer 5, Q 0.75), node 3 (answer 7, Q 0.5); final rewards (answer shares
    of the 2 terminals) 1/2 each: the tie goes to the higher Q, node 1.
    """
    from lrm_builtin.search.rstar import RStarSearch

    pol, ctx = _ctx()
    p = Problem(id="P", question="q")
    out = RStarSearch(rollouts=3, actions=["A2", "A5"], uct_c=1.4, discriminate=False).run(ctx, [p])
    (r,) = out
    cands = {c["node"]: c for c in r.candidates}
    assert sorted(cands) == [1, 3]
    assert cands[1]["answer"] == "5" and cands[1]["q"] == pytest.approx(0.75) and cands[1]["visits"] == 2
    assert cands[3]["answer"] == "7" and cands[3]["q"] == pytest.approx(0.5) and cands[3]["visits"] == 1
    assert cands[1]["score"] == pytest.approx(0.5) and cands[3]["score"] == pytest.approx(0.5)
    assert cands[3]["actions"] == ["A5", "A2"] and cands[1]["actions"] == ["A2"]
    assert cands[3]["text"] == "Rephrased question: what is P?\ns1\nAnswer: 7\n"
    assert r.answer == "5" and r.score == pytest.approx(0.5)
    # The action prompts the policy got: plain, rephrase suffix, continuation of the rephrasing.
    assert pol.prompts == ["Problem P\n", "Problem P\nRephrased question: ",
                           "Problem P\nRephrased question: what is P?\n"]

    # The discriminator (same policy): node 1 "t1 / Answer: 5" masked from step 0 or 1 completes
    # to 5 (consistent), so the highest-Q consistent trajectory is still node 1.
    _, ctx = _ctx()
    (r,) = RStarSearch(rollouts=3, actions=["A2", "A5"], uct_c=1.4).run(ctx, [p])
    c1 = next(c for c in r.candidates if c["node"] == 1)
    assert c1["masked_from"] in (0, 1) and c1["consistent"] and r.answer == "5"
    c3 = next(c for c in r.candidates if c["node"] == 3)
    assert 0 <= c3["masked_from"] <= 2  # 3 steps, i / 3 in [0.2, 0.8)
    assert c3["consistent"] == (c3["masked_from"] >= 1)

    # A discriminator that always answers 7 disagrees with node 1: node 3 is the only consistent one.
    _, ctx = _ctx()
    disc = PromptPolicy(contrarian)
    (r,) = RStarSearch(rollouts=3, actions=["A2", "A5"], uct_c=1.4, discriminator=disc).run(ctx, [p])
    assert r.answer == "7" and r.score == pytest.approx(0.5)
    assert [c["consistent"] for c in sorted(r.candidates, key=lambda c: c["node"])] == [False, True]
    assert all(q.startswith("Problem P\n") for q in disc.prompts) and len(disc.prompts) == 2


def subq_world(prompt: str) -> list[str]:
    if prompt.endswith("Sub-question: "):
        return ["what is 2+2?", "it is 5"]
    if prompt.endswith("Answer again: "):
        return ["it is 4"]
    return ["so", "Answer: 4" if "it is 4" in prompt else "Answer: 5"]


def test_rstar_subquestion_reanswer_replaces_the_answer_step():
    """A3 writes a sub-question and its answer; A4 under it rewrites that answer; trajectories keep
    the action suffixes."""
    from lrm_builtin.search.rstar import RStarSearch

    pol, ctx = _ctx(subq_world)
    (r,) = RStarSearch(rollouts=8, actions=["A2", "A3", "A4"], discriminate=False, max_depth=4).run(
        ctx, [Problem(id="P", question="q")])
    texts = {c["text"]: c for c in r.candidates}
    assert "so\nAnswer: 5\n" in texts  # A2 at the root
    reans = [t for t, c in texts.items() if "A4" in c["actions"]]
    assert reans, "some rollout re-answered the sub-question"
    for t in reans:  # the A3 answer "it is 5" was replaced by the re-answer
        assert "Sub-question: what is 2+2?\nAnswer again: it is 4\n" in t and t.endswith("Answer: 4\n")
        assert "it is 5\nAnswer again" not in t  # replaced, not appended
    assert any(q.endswith("Sub-question: what is 2+2?\nAnswer again: ") for q in pol.prompts)
    # A4 never at the root, A5 not offered: every A4 comes right after an A3.
    for c in r.candidates:
        acts = c["actions"]
        assert all(acts[i - 1] == "A3" for i, a in enumerate(acts) if a == "A4") and acts[0] != "A4"


def test_rstar_is_independent_of_the_batch():
    from lrm_builtin.search.rstar import RStarSearch

    probs = [Problem(id="Q1", question="q"), Problem(id="P", question="q")]
    _, ctx = _ctx(subq_world)
    alone = RStarSearch(rollouts=6, actions=["A1", "A2", "A3", "A4", "A5"]).run(ctx, probs[1:])
    _, ctx = _ctx(subq_world)
    both = RStarSearch(rollouts=6, actions=["A1", "A2", "A3", "A4", "A5"]).run(ctx, probs)
    assert both[1].candidates == alone[0].candidates and both[1].answer == alone[0].answer


@pytest.mark.parametrize("kw,msg", [
    (dict(actions=["A6"]), "search.actions"),
    (dict(actions=["A4"]), "needs A3"),
    (dict(templates={"B1": "x"}), "search.templates"),
    (dict(mask_low=0.9, mask_high=0.2), "mask_low"),
])
def test_rstar_refuses_bad_settings(kw, msg):
    from lrm_builtin.search.rstar import RStarSearch

    with pytest.raises(ValueError, match=msg):
        RStarSearch(**kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lrm_engine.models import save_tiny_llama

    root = tmp_path_factory.mktemp("rstar_tiny")
    return {"policy": save_tiny_llama(root / "policy", hidden_size=32, num_layers=1, initializer_range=0.3)}


def test_lrm_search_rstar_on_tiny_models(tiny, tmp_path):
    """`lrm search search=rstar` on a tiny random policy (tree forward): the whole path runs, the
    records hold the candidates with their discriminator verdicts and the compute counters."""
    from conftest import run_lrm

    out = tmp_path / "run"
    r = run_lrm("search", "task=arith", "task.num_test=2", "task.num_train=2", "policy=tree",
                f"policy.path={tiny['policy']}", "policy.max_step_tokens=4", "search=rstar",
                "search.rollouts=3", "search_run.limit=2", "search_run.max_steps=3",
                f"runtime.output_dir={out}", "runtime.progress=false", "runtime.num_threads=1",
                "kernels=reference", env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all("correct" in x for x in recs)
    assert all("consistent" in c and "masked_from" in c for x in recs for c in x["candidates"])
    assert sum(x["counters"]["policy_tokens_computed"] for x in recs) > 0
