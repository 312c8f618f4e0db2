"""Basic searches (greedy, majority, best_of_n, beam) on a scripted world with a known optimum."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lrm_engine.core.engine import SearchContext, run_search
from lrm_engine.core.interfaces import Problem, StepConvention
from lrm_engine.core.results import ResultsFile
from lrm_engine.testing import ScriptedPolicy, ScriptedReward, ScriptedWorld
from lrm_builtin.search.beam import BeamSearch
from lrm_builtin.search.common import choose
from lrm_builtin.search.greedy import GreedySearch
from lrm_builtin.search.sampled import BestOfNSearch, MajoritySearch

OPT = (2, 1, 2)


def world() -> ScriptedWorld:
    # Choice 0 is always the most likely step; the PRM likes exactly the prefixes of OPT.
    return ScriptedWorld(
        branching=3,
        depth=3,
        logprob=lambda p: -float(p[-1]),
        score=lambda p: 0.95 if p == OPT[: len(p)] else 0.1 + 0.2 * p[0],
        answer=lambda p: "opt" if p == OPT else "".join(map(str, p)),
    )


def make_ctx(w: ScriptedWorld, reward: bool = True, aggregation: str = "min") -> SearchContext:
    return SearchContext(
        policy=ScriptedPolicy(w),
        reward=ScriptedReward(w) if reward else None,
        step=StepConvention(),
        prompt=lambda p: p.question,
        aggregation=aggregation,
        max_steps=5,
        ops=None,
    )


PROBLEMS = [Problem(id=f"p{i}", question=f"q{i}") for i in range(3)]


def test_greedy_follows_the_most_likely_path():
    ctx = make_ctx(world(), reward=False)
    out = GreedySearch().run(ctx, PROBLEMS)
    assert [r.answer for r in out] == ["000"] * 3
    assert out[0].steps == ["s1c0", "s2c0", "s3c0 Answer: 000"]
    # One policy call per step for the whole batch of three problems.
    assert ctx.policy.expand_calls == 3


def test_beam_finds_the_prm_optimum_greedy_misses():
    ctx = make_ctx(world())
    out = BeamSearch(n=9, beam_width=3).run(ctx, PROBLEMS)
    assert [r.answer for r in out] == ["opt"] * 3
    assert out[0].score == pytest.approx(0.95)
    # depth 3: root expansion + 2 beam expansions, each one policy and one PRM call.
    assert ctx.policy.expand_calls == 3
    assert ctx.reward.score_calls == 3


def test_beam_with_one_beam_is_pruned_early():
    # keep = 1 beam of width 1 after a 1-candidate root step = greedy: cannot reach OPT.
    ctx = make_ctx(world())
    out = BeamSearch(n=1, beam_width=1).run(ctx, PROBLEMS[:1])
    assert out[0].answer == "000"


def test_best_of_n_picks_the_highest_aggregate():
    # Samples (k most likely first steps, then greedy): 000 (min .1), 100 (min .3), 200 (min .5).
    ctx = make_ctx(world())
    out = BestOfNSearch(n=3, choice="best").run(ctx, PROBLEMS[:2])
    assert [r.answer for r in out] == ["200", "200"]
    assert out[0].score == pytest.approx(0.5)
    assert sorted(c["answer"] for c in out[0].candidates) == ["000", "100", "200"]


def test_best_of_n_aggregations_differ():
    # With "last", 200's last step scores .5; with "mean": (0.95 + .5 + .5) / 3.
    ctx = make_ctx(world(), aggregation="mean")
    out = BestOfNSearch(n=3, choice="best").run(ctx, PROBLEMS[:1])
    assert out[0].score == pytest.approx((0.95 + 0.5 + 0.5) / 3, rel=1e-6)
    ctx = make_ctx(world(), aggregation="prod")
    out = BestOfNSearch(n=3, choice="best").run(ctx, PROBLEMS[:1])
    assert out[0].score == pytest.approx(0.95 * 0.5 * 0.5, rel=1e-5)


def test_majority_votes_on_answers():
    w = dataclasses.replace(world(), answer=lambda p: "7" if p[0] > 0 else "3")
    ctx = make_ctx(w, reward=False)
    out = MajoritySearch(n=3).run(ctx, PROBLEMS[:1])
    assert out[0].answer == "7"
    assert out[0].score == pytest.approx(2 / 3)


def test_choose_golden():
    c = [
        {"answer": "1", "score": 0.9},
        {"answer": "2", "score": 0.4},
        {"answer": "2", "score": 0.4},
        {"answer": None, "score": 1.0},
    ]
    assert choose(c, "best") == (3, 1.0)
    assert choose(c, "majority") == (1, pytest.approx(2 / 3))
    i, share = choose(c, "weighted")  # 1: .9 vs 2: .8
    assert i == 0 and share == pytest.approx(0.9 / 1.7)


def test_search_side_problems_carry_no_reference():
    fields = {f.name for f in dataclasses.fields(Problem)}
    assert not fields & {"reference", "answer", "solution", "solution_steps"}
    ctx_fields = {f.name for f in dataclasses.fields(SearchContext)}
    assert "task" not in ctx_fields and "examples" not in ctx_fields
    # The task plugins hand searches Problems; the reference stays on the Example.
    from lrm_builtin.tasks.arith import ArithTask

    ex = next(iter(ArithTask().examples("test")))
    assert isinstance(ex.problem, Problem) and not hasattr(ex.problem, "reference")


def test_run_search_writes_incrementally_and_resumes(tmp_path):
    path = tmp_path / "results.jsonl"
    ctx = make_ctx(world())
    problems = [Problem(id=f"p{i}", question=f"q{i}") for i in range(5)]
    run_search(BeamSearch(n=9, beam_width=3), ctx, problems[:3], ResultsFile(path), batch_size=2,
               progress=False)
    # A torn last line (killed mid-write) is dropped, then the rest is appended exactly once.
    with open(path, "a") as f:
        f.write('{"id": "p3", "answ')
    ctx2 = make_ctx(world())
    recs = run_search(BeamSearch(n=9, beam_width=3), ctx2, problems, ResultsFile(path),
                      batch_size=2, progress=False)
    lines = path.read_text().splitlines()
    ids = [__import__("json").loads(x)["id"] for x in lines]
    assert ids == ["p0", "p1", "p2", "p3", "p4"]
    assert ctx2.policy.expand_calls == 3  # only p3, p4 (one batch) were searched again
    assert all(r["answer"] == "opt" for r in recs)
    assert recs[0]["counters"]["policy_tokens_computed"] > 0


def test_tree_invariants_after_beam():
    ctx = make_ctx(world())
    captured = {}
    orig = ctx.policy.release
    ctx.policy.release = lambda t: captured.setdefault("tree", t) and None
    BeamSearch(n=9, beam_width=3).run(ctx, PROBLEMS[:2])
    tree = captured["tree"]
    ctx.policy.release = orig
    for b in range(2):
        used = int(tree.num_nodes[b])
        cv = tree.children_visits()[b, :used].sum(-1)
        # every created node was backed up once from itself, the root once at start
        assert torch.equal(tree.visit_count[b, :used], 1 + cv)
        assert not math.isnan(float(tree.path_min[b, 1]))


def test_duplicate_sibling_steps_are_flagged():
    """Same parent + same step tokens = one beam; same tokens under another parent are kept."""
    from types import SimpleNamespace

    from lrm_engine.core.tree import BatchedTree
    from lrm_engine.models.token_store import TokenArena
    from lrm_builtin.search.common import duplicate_siblings

    tree = BatchedTree.empty(1, 8, 4)
    arena = TokenArena()
    steps = {1: (0, [5, 6]), 2: (0, [5, 6]), 3: (0, [5, 7]), 4: (1, [5, 6]), 5: (0, [5])}
    for n, (p, toks) in steps.items():
        tree.parent[0, n] = p
        tree.token_offset[0, n] = arena.append(toks)
        tree.token_length[0, n] = len(toks)
    ctx = SimpleNamespace(policy=SimpleNamespace(arena=lambda t: arena))
    cand = torch.tensor([[1, 2, 3, 4, 5, -1]], dtype=torch.int32)
    dup = duplicate_siblings(ctx, tree, cand)
    assert dup.tolist() == [[False, True, False, False, False, False]]
    # Policies without an arena (scripted worlds) are left alone.
    assert not duplicate_siblings(SimpleNamespace(policy=object()), tree, cand).any()
    assert arena.spans(torch.tensor([0, 4]), torch.tensor([2, 1])).tolist() == [[5, 6], [5, -1]]
