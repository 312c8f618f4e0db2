"""Issue 13 item 9, "algorithms as published": golden tests with hand-computed values.

- grpo / ppo / vineppo: several optimisation passes over each rollout batch with old log-probs
  (and old values) from rollout time, so the clipped ratio and value clipping act;
- ``loss_type=dr_grpo`` implies no std scaling of the advantages (Dr. GRPO, TRL);
- lookahead: survivors keep only their first step (Snell et al. 2024);
- mcts: the ``rule`` option (puct / uct) reaches the select op;
- compute_optimal: the probe solutions stay candidates of every question;
- searches that rank unfinished paths by step scores refuse an outcome-only reward.
"""

from __future__ import annotations

import math

import pytest
import torch

from lrm_engine.core.engine import SearchContext
from lrm_engine.core.interfaces import Problem, StepConvention
from lrm_engine.testing import ScriptedPolicy, ScriptedReward, ScriptedWorld

torch.set_num_threads(1)


def _ctx(world: ScriptedWorld, max_steps: int = 5, aggregation: str = "min") -> SearchContext:
    return SearchContext(policy=ScriptedPolicy(world), reward=ScriptedReward(world), step=StepConvention(),
                         prompt=lambda p: p.question, max_steps=max_steps, aggregation=aggregation)


def _problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", question=f"q{i}") for i in range(n)]


# ------------------------------------------------------------------------------ lookahead
def _spy_expand(ctx):
    """Record (depth of every expanded node, k, greedy?) of each ctx.expand call."""
    calls = []
    inner = ctx.expand

    def expand(tree, nodes, k, sampling=None, score=True):
        ok = nodes >= 0
        depths = sorted({int(tree.depth[b, int(nodes[b, j])]) for b, j in ok.nonzero().tolist()})
        calls.append((depths, k, bool(getattr(sampling, "greedy", False))))
        return inner(tree, nodes, k, sampling=sampling, score=score)

    ctx.expand = expand
    return calls


def test_lookahead_survivors_keep_only_their_first_step():
    from lrm_builtin.search.lookahead import LookaheadSearch

    # depth 4, choice 0 most likely; the PRM likes prefixes of (1, 0, 0, 0), a bit less of
    # (0, ...). Greedy look-ahead continues with choice 0.
    world = ScriptedWorld(branching=2, depth=4, logprob=lambda p: -float(p[-1]),
                          score=lambda p: 0.9 if p[0] == 1 else 0.6,
                          answer=lambda p: "".join(map(str, p)))
    ctx = _ctx(world, max_steps=4)
    calls = _spy_expand(ctx)
    out = LookaheadSearch(n=2, beam_width=2, lookahead=2).run(ctx, _problems(1))
    sampled = [d for d, k, g in calls if not g]
    looked = [d for d, k, g in calls if g]
    # The sampled expansions start at the root, then at the survivor of each round: depths
    # 0, 1, 2, 3 (with the look-ahead steps kept, the second would start at depth 3).
    assert sampled == [[0], [1], [2], [3]]
    # Look-ahead: 2 greedy steps from depth 1 and 2 (candidates at depth 1 -> 2 -> 3; at depth
    # 2 -> 3 -> 4), one from depth 3 (the world ends at 4), none after the last round.
    assert looked == [[1], [2], [2], [3], [3]]
    r = out[0]
    assert r.answer == "1000" and r.steps == ["s1c1", "s2c0", "s3c0", "s4c0 Answer: 1000"]
    assert r.score == pytest.approx(0.9)
    # Every candidate is a solution the rounds sampled (depth 4, last step sampled), never a
    # look-ahead chain: the finished ones are the 2 children of the depth-3 survivor.
    assert sorted(c["answer"] for c in r.candidates) == ["1000", "1001"]


def test_lookahead_tokens_match_the_hand_count():
    """Per round: n candidates + n * k look-ahead steps (fewer near the end), nothing reused."""
    from lrm_builtin.search.lookahead import LookaheadSearch

    world = ScriptedWorld(branching=2, depth=3, logprob=lambda p: -float(p[-1]),
                          score=lambda p: 0.9 if p[0] == 1 else 0.6, answer=lambda p: "x")
    ctx = _ctx(world, max_steps=3)
    LookaheadSearch(n=2, beam_width=2, lookahead=1).run(ctx, _problems(1))
    # round 1: 2 candidates (depth 1) + 2 look-ahead; round 2: 2 (depth 2) + 2; round 3: 2
    # terminal candidates -> 10. Keeping the look-ahead steps would have given 2+2+2 = 6.
    assert ctx.policy.counters.tokens_computed == 10


# ------------------------------------------------------------------------------ mcts rule
def _bandit() -> ScriptedWorld:
    # One step: choice 0 is likely (prior 0.95 with prior=logprob) but worth 0.4, choice 1
    # unlikely and worth 0.6.
    return ScriptedWorld(branching=2, depth=1, logprob=lambda p: -3.0 * p[-1],
                         score=lambda p: 0.4 if p[-1] == 0 else 0.6, answer=lambda p: str(p[-1]))


class _RecordingOps:
    """The context's op backend, recording the rule of every select call."""

    def __init__(self, inner, seen):
        self._inner, self._seen = inner, seen

    def select(self, tree, k, **kw):
        self._seen.append(kw["rule"])
        return self._inner.select(tree, k, **kw)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_mcts_rule_reaches_the_select_op():
    from lrm_builtin.search.mcts import MCTSSearch

    # Simulation 1 expands the root (both children valued once; root visits 3). Simulation 2:
    # priors p = softmax(0, -3) = (0.9526, 0.0474), q = (0.4, 0.6).
    #   PUCT: v_root = 1/3, qhat = ((0.4-1/3)/(0.6-1/3), 1) = (0.25, 1); pb_c = 1.25 + ln(19656/19652)
    #         = 1.2502; score = qhat + p*sqrt(3)*pb_c/2 = (1.281, 1.051) -> child 0.
    #   UCT (c = sqrt 2): q + c*sqrt(ln 3 / 1) = (1.882, 2.082) -> child 1.
    # The second visit decides the most-visited child, hence the answer.
    seen = []
    answers = {}
    for rule in ("puct", "uct"):
        ctx = _ctx(_bandit(), max_steps=1)
        ctx.ops = _RecordingOps(ctx.ops, seen)
        answers[rule] = MCTSSearch(simulations=2, k=2, prior="logprob", rule=rule).run(ctx, _problems(1))[0].answer
    assert answers == {"puct": "0", "uct": "1"}
    assert seen == ["puct", "puct", "uct", "uct"]
    with pytest.raises(ValueError, match="search.rule"):
        MCTSSearch(rule="ucb")


def test_uct_and_puct_scores_by_hand():
    """The select op's two rules on the bandit's root after one expansion (numbers above)."""
    from lrm_engine import ops
    from lrm_engine.core.tree import BatchedTree

    tree = BatchedTree.empty(1, 4, 2)
    p = torch.softmax(torch.tensor([0.0, -3.0]), -1)
    for a, v in ((0, 0.4), (1, 0.6)):
        tree.children_index[0, 0, a] = a + 1
        tree.parent[0, a + 1] = 0
        tree.depth[0, a + 1] = 1
        tree.visit_count[0, a + 1] = 1
        tree.value_sum[0, a + 1] = v
        tree.terminal[0, a + 1] = True
    tree.children_prior[0, 0] = p
    tree.num_nodes[0] = 3
    tree.visit_count[0, 0] = 3
    tree.value_sum[0, 0] = 1.0
    n_p, a_p = ops.select(tree, 1, rule="puct", backend="reference")
    n_u, a_u = ops.select(tree, 1, rule="uct", uct_c=math.sqrt(2.0), backend="reference")
    # Both descend into a (terminal) child: leaf (child, -1); PUCT child 0 (slot 1), UCT child 1.
    assert (int(n_p[0, 0]), int(n_u[0, 0])) == (1, 2)
    pb_c = 1.25 + math.log((3 + 19652 + 1) / 19652)
    puct = [0.25 + float(p[0]) * math.sqrt(3) * pb_c / 2, 1.0 + float(p[1]) * math.sqrt(3) * pb_c / 2]
    uct = [q + math.sqrt(2.0) * math.sqrt(math.log(3)) for q in (0.4, 0.6)]
    assert puct[0] > puct[1] and uct[1] > uct[0]
    assert puct == pytest.approx([1.2812, 1.0514], abs=1e-3)


# ------------------------------------------------------------------------------ compute_optimal
def test_compute_optimal_keeps_its_probe_solutions_as_candidates():
    from lrm_builtin.search.compute_optimal import ComputeOptimalSearch

    # One hard question. Probe (2 solutions: the two most likely first steps, then greedy):
    # 000 (last step 0.0) and 100 (last 0.95): difficulty 1 - 0.475 = 0.525 > 0.5 -> beam.
    # Budget 4 x 6 tokens, probe 12 -> 2 more solutions -> beam n=2: first step 0 (0.6) beats
    # 1 (0.2), so the beam never sees 100 and ends at 001 (0.4). The probe's 100 is the best.
    def score(p):
        if p[0] == 1:
            return 0.2 if len(p) == 1 else 0.95
        if p[0] == 0:
            return {1: 0.6, 2: 0.5}.get(len(p), 0.0 if p == (0, 0, 0) else 0.4)
        return 0.1

    world = ScriptedWorld(branching=4, depth=3, logprob=lambda p: -float(p[-1]), score=score,
                          answer=lambda p: "".join(map(str, p)))
    ctx = _ctx(world, max_steps=3, aggregation="last")
    co = ComputeOptimalSearch(n=4, probe_n=2)
    r = co.run(ctx, _problems(1))[0]
    alloc = co.last_allocation[0]
    assert alloc["kind"] == "beam" and alloc["difficulty"] == pytest.approx(0.525) and alloc["share"] == 2
    by_pass = sorted((c["pass"], c["answer"]) for c in r.candidates)
    assert by_pass == [("beam", "000"), ("beam", "001"), ("probe", "000"), ("probe", "100")]
    assert r.answer == "100" and r.score == pytest.approx(0.95)
    assert r.steps == ["s1c1", "s2c0", "s3c0 Answer: 100"]


# ------------------------------------------------------------------------------ orm refused
@pytest.mark.parametrize("name", ["lookahead", "mcts", "compute_optimal"])
def test_step_score_searches_refuse_an_outcome_reward(name):
    from lrm_builtin.search.compute_optimal import ComputeOptimalSearch
    from lrm_builtin.search.lookahead import LookaheadSearch
    from lrm_builtin.search.mcts import MCTSSearch

    from lrm_engine.core.engine import check_reward_fits
    from lrm_engine.errors import UserError
    from lrm_engine.rewards.outcome import OutcomeRM

    search = {"lookahead": LookaheadSearch, "mcts": MCTSSearch, "compute_optimal": ComputeOptimalSearch}[name]()
    orm = OutcomeRM(ScriptedReward(_bandit()))
    with pytest.raises(UserError, match=f"search={name} ranks unfinished reasoning paths.*reward="):
        check_reward_fits(search, orm)
    check_reward_fits(search, ScriptedReward(_bandit()))  # a step-level reward fits
