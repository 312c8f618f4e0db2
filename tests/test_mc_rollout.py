"""mc_rollout (Math-Shepherd) on a scripted world with hand-computed labels."""

from __future__ import annotations

import json

import pytest

from lrm_engine.core.engine import SearchContext
from lrm_engine.core.interfaces import Example, Problem, StepConvention
from lrm_engine.core.results import ResultsFile
from lrm_engine.testing import ScriptedPolicy, ScriptedWorld
from lrm_builtin.annotators.mc_rollout import MCRolloutAnnotator

STEP = StepConvention()


def world():
    # Child i of a node = choice i (logprob -i). A solution is correct iff its second choice is 1.
    return ScriptedWorld(
        branching=3, depth=3,
        logprob=lambda p: -float(p[-1]),
        score=lambda p: 0.5,
        answer=lambda p: "yes" if p[1] == 1 else "no",
    )


def grade(ex: Example, text: str) -> bool:
    return STEP.extract_answer(text) == ex.reference


def ctx_for(w):
    return SearchContext(policy=ScriptedPolicy(w), step=STEP, prompt=lambda p: p.question, max_steps=5)


def examples(n):
    return [Example(problem=Problem(id=f"e{i}", question=f"q{i}"), reference="yes") for i in range(n)]


def test_labels_match_hand_computation():
    # Chain = (0,0,0) (child 0 each time), wrong. From c1=(0,): completions are the chain (wrong),
    # (0,1)->(0,1,0) right, (0,2)->(0,2,0) wrong: soft 1/3, hard True. From c2=(0,0): the chain,
    # (0,0,1), (0,0,2), all wrong: 0. The final step c3 is labelled by its own answer: 0.
    recs = MCRolloutAnnotator(num_rollouts=3).annotate_batch(ctx_for(world()), examples(2), grade)
    assert len(recs) == 2
    r = recs[0]
    assert r["completions"] == ["s1c0", "s2c0", "s3c0 Answer: no"]
    assert r["soft_labels"] == pytest.approx([1 / 3, 0.0, 0.0])
    assert r["labels"] == [True, False, False]
    assert r["answer_correct"] is False
    assert r["prompt"] == "q0"


def test_one_rollout_is_the_chain_itself():
    recs = MCRolloutAnnotator(num_rollouts=1).annotate_batch(ctx_for(world()), examples(1), grade)
    assert recs[0]["soft_labels"] == [0.0, 0.0, 0.0]


def test_batched_calls_and_resume(tmp_path):
    w = world()
    ctx = ctx_for(w)
    out = ResultsFile(tmp_path / "prm.jsonl")
    ann = MCRolloutAnnotator(num_rollouts=3)
    ann.annotate(ctx, examples(3), grade, out, batch_size=4, progress=False)
    calls = ctx.policy.expand_calls
    # first step + per level one chain call and one rollout call: bounded by depth, not by problems
    assert calls <= 1 + 2 * 3
    ann.annotate(ctx, examples(5), grade, ResultsFile(tmp_path / "prm.jsonl"), batch_size=4, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "prm.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["e0", "e1", "e2", "e3", "e4"]
    assert all(set(r) >= {"prompt", "completions", "labels"} for r in lines)
