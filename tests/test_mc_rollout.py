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


def test_emit_rollouts_keeps_each_distinct_correct_rollout():
    # Same world as above: of the rollouts, only (0,1)->(0,1,0) reaches "yes" (it branches off
    # the chain at c1, whose soft label is 1/3). It becomes one all-good record per problem.
    recs = MCRolloutAnnotator(num_rollouts=3, emit_rollouts=True).annotate_batch(
        ctx_for(world()), examples(2), grade)
    assert [r["id"] for r in recs] == ["e0", "e0#r0", "e1", "e1#r0"]
    r = recs[1]
    assert r["completions"] == ["s1c0", "s2c1", "s3c0 Answer: yes"]
    assert r["labels"] == [True, True, True] and r["source"] == "rollout"
    assert r["soft_labels"] == pytest.approx([1 / 3, 1.0, 1.0])
    assert grade(examples(1)[0], "\n".join(r["completions"]))
    # more rollouts: the duplicates of the same correct path are written once
    many = MCRolloutAnnotator(num_rollouts=9, emit_rollouts=True, temperature=1.0).annotate_batch(
        ctx_for(world()), examples(1), grade)
    kept = [tuple(r["completions"]) for r in many if r.get("source") == "rollout"]
    assert kept and len(kept) == len(set(kept))
    assert all(c[1].startswith("s2c1") for c in kept)  # only paths whose second choice is 1


class PrefixPolicy(ScriptedPolicy):
    """A scripted completer whose roots start at the path written in the prompt
    ("q0" + "s1c0\\ns2c1\\n" -> path (0, 1)); text() is what was generated after the root."""

    def init_roots(self, tree, prompts):
        import re

        self._root = getattr(self, "_root", {})
        for b, p in enumerate(prompts):
            path = tuple(int(c) for c in re.findall(r"s\d+c(\d+)", p))
            self._paths[(id(tree), b, 0)] = path
            self._root[(id(tree), b)] = len(path)

    def text(self, tree, b, n, with_prompt=False):
        p, r = self.path(tree, b, n), self._root[(id(tree), b)]
        return "".join(self.world.step_text(p[: i + 1]) + "\n" for i in range(r, len(p)))


def test_separate_completer_labels_the_policy_solution():
    # The policy writes the chain (0,0,0). The completer prefers choice 1 (then 0, then 2); from
    # prefix (0,) its 3 completions are (0,1,1) yes, (0,0,1) no, (0,2,1) no: soft 1/3. From
    # (0,0) every completion keeps choice 0 at level 2: all "no", 0. The last step: its own
    # answer ("no"), 0. The solution's own answer is not counted as a completion.
    smart = ScriptedWorld(branching=3, depth=3, logprob=lambda p: -float(abs(p[-1] - 1)),
                          score=lambda p: 0.5, answer=lambda p: "yes" if p[1] == 1 else "no")
    completer = SearchContext(policy=PrefixPolicy(smart), step=STEP, prompt=lambda p: p.question, max_steps=5)
    ann = MCRolloutAnnotator(num_rollouts=3, emit_rollouts=True)
    recs = ann.annotate_batch(ctx_for(world()), examples(2), grade, completer=completer)
    assert [r["id"] for r in recs] == ["e0", "e0#r0", "e1", "e1#r0"]
    r = recs[0]
    assert r["completions"] == ["s1c0", "s2c0", "s3c0 Answer: no"]
    assert r["soft_labels"] == pytest.approx([1 / 3, 0.0, 0.0])
    assert r["labels"] == [True, False, False] and r["answer_correct"] is False
    roll = recs[1]
    assert roll["completions"] == ["s1c0", "s2c1", "s3c1 Answer: yes"]
    assert roll["labels"] == [True, True, True] and roll["soft_labels"] == pytest.approx([1 / 3, 1.0, 1.0])
    # one completer call per level for all prefixes of the batch (+ the first expansion)
    assert completer.policy.expand_calls <= 1 + 3
    # through annotate(): resumable as before
    import tempfile, pathlib
    with tempfile.TemporaryDirectory() as d:
        out = ResultsFile(pathlib.Path(d) / "prm.jsonl")
        got = ann.annotate(ctx_for(world()), examples(3), grade, out, batch_size=2, progress=False,
                           completer=completer)
        assert [x["id"] for x in got if "#" not in x["id"]] == ["e0", "e1", "e2"]
