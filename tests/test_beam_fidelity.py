"""Beam search as search-and-learn runs it (issue 20): copies of the best prefix stay beams.

A sampling policy draws its favourite step most of the n times. search-and-learn keeps the top
n // beam_width candidates by path score copies included, so the best prefix gets all n samples
of the next step; counting duplicates once (lrm's old beam) hands those places to lower-scored
distinct prefixes and gives the best one only beam_width samples. The scripted world below has
a hard second step whose right string is 1 sample in 16: only the first rule finds it.
"""

from __future__ import annotations

import pytest
import torch

from lrm_engine.core.engine import SearchContext
from lrm_engine.core.interfaces import Problem, StepConvention
from lrm_engine.core.tree import BatchedTree
from lrm_engine.models.token_store import TokenArena
from lrm_engine.testing import ScriptedPolicy, ScriptedReward
from lrm_builtin.search.beam import BeamSearch
from lrm_builtin.search.common import first_copies

# Sample streams per prefix (choices, in draw order; the stream repeats when exhausted). Root:
# the right first step (0) 13 times in 16, three wrong ones once each. After the right first
# step the right second step (0) is the 16th draw, the wrong one (1) all others. Everything
# else continues with choice 0.
STREAMS = {
    (): [0, 1, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0],
    (0,): [1] * 15 + [0],
}
SCORES = {(0,): 0.9, (1,): 0.5, (2,): 0.4, (3,): 0.3, (0, 0): 0.9, (0, 1): 0.2}


class SampledWorld:
    """A ScriptedWorld whose children are draws from per-prefix streams (duplicates happen)."""

    depth = 3

    def __init__(self):
        self.drawn: dict[tuple, int] = {}

    def children(self, path, k):
        stream = STREAMS.get(path, [0])
        i = self.drawn.get(path, 0)
        self.drawn[path] = i + k
        return [path + (stream[(i + j) % len(stream)],) for j in range(k)]

    def logprob(self, path):
        return -1.0

    def score(self, path):
        return SCORES.get(path, 0.6 if len(path) < self.depth else 0.9)

    def answer(self, path):
        return "right" if path[:2] == (0, 0) else "wrong" + "".join(map(str, path))

    def step_text(self, path):
        text = f"s{len(path)}c{path[-1]}"
        return text + (f" Answer: {self.answer(path)}" if len(path) == self.depth else "")


class ArenaPolicy(ScriptedPolicy):
    """ScriptedPolicy that also stores each step's token (its choice) in a token arena, as the
    real policies do, so duplicate steps are visible to the search."""

    def init_roots(self, tree, prompts):
        super().init_roots(tree, prompts)
        self._arena = TokenArena()

    def arena(self, tree):
        return self._arena

    def expand(self, tree, nodes, k, sampling=None):
        res = super().expand(tree, nodes, k, sampling)
        for b, c in (res.children_bt.view(tree.batch_size, -1) >= 0).nonzero().tolist():
            n = int(res.children_bt.view(tree.batch_size, -1)[b, c])
            tree.token_offset[b, n] = self._arena.append([self.path(tree, b, n)[-1]])
            tree.token_length[b, n] = 1
        return res


def run(duplicates=None):
    w = SampledWorld()
    ctx = SearchContext(policy=ArenaPolicy(w), reward=ScriptedReward(w), step=StepConvention(),
                        prompt=lambda p: p.question, aggregation="min", max_steps=5, ops=None)
    kw = {} if duplicates is None else {"duplicates": duplicates}
    search = BeamSearch(n=16, beam_width=4, **kw)
    out = search.run(ctx, [Problem(id="p0", question="q")])
    return out[0], search, ctx


def test_copies_of_the_best_prefix_get_all_n_samples_by_default():
    res, search, ctx = run()
    assert res.answer == "right"
    assert res.score == pytest.approx(0.9)
    assert ctx.policy.world.drawn[(0,)] == 16
    stats = search.stats["p0"]
    # Every step samples n = 16; the 4 kept places after the root all go to copies of step 0.
    assert stats == {"sampled": [16, 16, 16], "distinct": [4, 2, 2], "finished": [0, 0, 16],
                     "kept": [1, 2, 0]}
    assert ctx.policy.expand_calls == 3 and ctx.reward.score_calls == 3


def test_dropping_duplicates_is_the_documented_option():
    # The old rule: distinct beams only; the right prefix gets 4 samples, all wrong.
    res, search, ctx = run("drop")
    assert res.answer != "right"
    stats = search.stats["p0"]
    assert stats["kept"][:2] == [4, 4] and stats["sampled"] == [16, 16, 16]
    assert ctx.policy.world.drawn[(0,)] == 4


def test_unknown_duplicates_rule_is_refused():
    with pytest.raises(ValueError, match="search.duplicates"):
        BeamSearch(duplicates="merge")


def test_first_copies_finds_equal_paths_under_copies_of_a_prefix():
    tree = BatchedTree.empty(1, 8, 4)
    arena = TokenArena()
    # nodes 1 and 2: two copies of one step; 3, 4 under 1 and 5, 6 under 2.
    steps = {1: (0, [5]), 2: (0, [5]), 3: (1, [7]), 4: (1, [8]), 5: (2, [7]), 6: (2, [9])}
    for n, (p, toks) in steps.items():
        tree.parent[0, n] = p
        tree.token_offset[0, n] = arena.append(toks)
        tree.token_length[0, n] = len(toks)
    policy = type("P", (), {"arena": lambda self, t: arena})()
    ctx = type("C", (), {"policy": policy})()
    root = first_copies(ctx, tree, torch.tensor([[1, 2, -1]]))
    assert root.tolist() == [[0, 0, -1]]
    cand = torch.tensor([[3, 4, 5, 6]])
    # Siblings only (parent slots): 5 is not a copy of 3 (another parent node).
    assert first_copies(ctx, tree, cand).tolist() == [[0, 1, 2, 3]]
    # Parents' path classes (both parents are class 0): 5 repeats 3's path.
    key = torch.tensor([[0, 0, 0, 0]])
    assert first_copies(ctx, tree, cand, key).tolist() == [[0, 1, 0, 3]]


def test_beam_refuses_an_outcome_only_reward():
    # Beam ranks unfinished paths: an ORM (NaN on every unfinished step) would rank nothing.
    from lrm_engine.core.engine import check_reward_fits
    from lrm_engine.errors import UserError
    from lrm_engine.rewards.outcome import OutcomeRM

    w = SampledWorld()
    with pytest.raises(UserError, match="search=beam ranks unfinished reasoning paths.*reward=orm"):
        check_reward_fits(BeamSearch(), OutcomeRM(ScriptedReward(w)))
    check_reward_fits(BeamSearch(), ScriptedReward(w))  # a step reward: fine


def test_finished_beams_are_compared_at_the_live_aggregation():
    # Every finished candidate's score is the min over its path's step scores, as live beams
    # are ranked: a wrong path (0, 1, x) has last step 0.9 but min 0.2, so it never ties with
    # the right one (0, 0, x) at 0.9 (it would under aggregation "last").
    res, _, ctx = run()
    w = ctx.policy.world
    seen = set()
    for c in res.candidates:
        if c["answer"] == "right":
            path = (0, 0, 0)
        else:
            path = tuple(int(d) for d in c["answer"][len("wrong"):])
        seen.add(path[:2])
        assert c["score"] == pytest.approx(min(w.score(path[:i]) for i in range(1, len(path) + 1)))
    assert seen == {(0, 0), (0, 1)}
    assert res.score == pytest.approx(0.9)
