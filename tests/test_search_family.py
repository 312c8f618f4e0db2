"""lookahead, dvts, mcts, tot_bfs, tot_dfs on scripted worlds with known optima."""

from __future__ import annotations

import collections

import pytest
import torch

from lrm_engine.core.engine import SearchContext
from lrm_engine.core.interfaces import Problem, StepConvention
from lrm_engine.testing import ScriptedPolicy, ScriptedReward, ScriptedWorld
from lrm_builtin.search.beam import BeamSearch
from lrm_builtin.search.dvts import DVTSSearch
from lrm_builtin.search.greedy import GreedySearch
from lrm_builtin.search.lookahead import LookaheadSearch
from lrm_builtin.search.mcts import MCTSSearch
from lrm_builtin.search.tot_bfs import ToTBFSSearch
from lrm_builtin.search.tot_dfs import ToTDFSSearch

torch.set_num_threads(1)

OPT = (2, 0, 1)


def world(answer=None) -> ScriptedWorld:
    # Choice 0 is always the most likely step (greedy: 000); the PRM likes exactly OPT's prefixes.
    return ScriptedWorld(
        branching=4,
        depth=3,
        logprob=lambda p: -float(p[-1]),
        score=lambda p: 0.95 if p == OPT[: len(p)] else 0.1 + 0.2 * p[0],
        answer=answer or (lambda p: "opt" if p == OPT else "".join(map(str, p))),
    )


def make_ctx(w: ScriptedWorld, max_steps: int = 5) -> SearchContext:
    return SearchContext(policy=ScriptedPolicy(w), reward=ScriptedReward(w), step=StepConvention(),
                         prompt=lambda p: p.question, max_steps=max_steps)


def problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", question=f"q{i}") for i in range(n)]


def keep_tree(ctx):
    """Keep the searched tree (and its paths) instead of releasing it."""
    got = {}
    ctx.policy.release = lambda t: got.setdefault("tree", t) and None
    return got


SEARCHES = {
    # One survivor of 4 (keep 1): the survivor keeps its first step only, so OPT's last step is
    # found by expanding (2, 0) itself (its greedy continuation (2, 0, 0) scores 0.5).
    "lookahead": lambda **kw: LookaheadSearch(n=4, beam_width=4, lookahead=1, **kw),
    "dvts": lambda **kw: DVTSSearch(n=4, beam_width=2, **kw),
    "mcts": lambda **kw: MCTSSearch(simulations=24, k=3, **kw),
    "mcts_k4_rollout": lambda **kw: MCTSSearch(simulations=24, k=3, num_leaves=4, value="rollout", **kw),
    "mcts_value_last": lambda **kw: MCTSSearch(simulations=24, k=3, final="value",
                                               terminal_value="last", **kw),
    "tot_bfs": lambda **kw: ToTBFSSearch(proposals=4, keep=2, **kw),
    "tot_dfs": lambda **kw: ToTDFSSearch(proposals=3, threshold=0.5, **kw),
}


def test_greedy_misses_the_optimum():
    assert [r.answer for r in GreedySearch().run(make_ctx(world()), problems(2))] == ["000"] * 2


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_every_search_finds_the_prm_optimum_batched(name):
    ctx1 = make_ctx(world())
    out1 = SEARCHES[name]().run(ctx1, problems(1))
    ctx3 = make_ctx(world())
    out3 = SEARCHES[name]().run(ctx3, problems(3))
    assert [r.answer for r in out3] == ["opt"] * 3 and out1[0].answer == "opt"
    assert out3[0].steps == ["s1c2", "s2c0", "s3c1 Answer: opt"]
    assert out3[0].score == pytest.approx(0.95)
    # One policy call and one PRM call per iteration for the whole batch: three problems cost
    # the same number of calls as one.
    assert ctx3.policy.expand_calls == ctx1.policy.expand_calls
    assert ctx3.reward.score_calls == ctx3.policy.expand_calls
    assert ctx3.policy.counters.tokens_computed == 3 * ctx1.policy.counters.tokens_computed


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_self_consistency_on_top_of_every_search(name):
    # Two answers only: the vote follows the candidates' answers, with the vote share as score.
    w = world(answer=lambda p: "7" if p[-1] % 2 == 0 else "8")
    search = SEARCHES[name](choice="majority")
    if name == "tot_dfs":
        search.solutions = 3
    r = search.run(make_ctx(w), problems(1))[0]
    votes = collections.Counter(c["answer"] for c in r.candidates)
    assert sum(votes.values()) >= 2
    top = max(votes.values())
    assert votes[r.answer] == top and r.score == pytest.approx(top / sum(votes.values()))
    weighted = SEARCHES[name](choice="weighted").run(make_ctx(w), problems(1))[0]
    assert weighted.answer in {"7", "8"}


def test_unknown_choice_and_missing_reward_fail_clearly():
    for make in SEARCHES.values():
        with pytest.raises(ValueError, match="choice"):
            make(choice="nope")
    ctx = make_ctx(world())
    ctx.reward = None
    with pytest.raises(ValueError, match="reward model"):
        MCTSSearch().run(ctx, problems(1))


# ---------------------------------------------------------------- lookahead
def trap_world() -> ScriptedWorld:
    # Step 1: choice 1 looks best (.9) but every continuation is bad (.1); choice 2 looks
    # mediocre (.6) and its greedy continuation is good: only look-ahead sees it.
    def score(p):
        if p[0] == 1:
            return 0.9 if len(p) == 1 else 0.1
        if p[0] == 2:
            return 0.6 if len(p) == 1 else (0.9 if p[1:] in ((0,), (0, 0)) else 0.3)
        return 0.3

    return ScriptedWorld(branching=3, depth=3, logprob=lambda p: -float(p[-1]), score=score,
                         answer=lambda p: "opt" if p == (2, 0, 0) else "".join(map(str, p)))


def test_lookahead_sees_past_a_trap_that_beam_falls_into():
    beam = BeamSearch(n=3, beam_width=3).run(make_ctx(trap_world()), problems(2))
    assert beam[0].answer.startswith("1")
    plain = LookaheadSearch(n=3, beam_width=3, lookahead=0).run(make_ctx(trap_world()), problems(1))
    assert plain[0].answer == beam[0].answer  # lookahead=0 is beam search
    ctx = make_ctx(trap_world())
    out = LookaheadSearch(n=3, beam_width=3, lookahead=1).run(ctx, problems(2))
    assert [r.answer for r in out] == ["opt", "opt"]
    # The survivor keeps its first step only (Snell et al.; issue 13): per problem, 3 root
    # candidates + 3 look-ahead steps, 3 children of (2,) + 3 look-ahead steps, 3 children of
    # (2, 0) (terminal: no look-ahead needed). (Before: the look-ahead step (2, 0) was kept, 9.)
    assert ctx.policy.counters.tokens_computed == 2 * 15
    assert ctx.policy.expand_calls == 5


# ---------------------------------------------------------------- dvts
def test_dvts_keeps_independent_subtrees():
    ctx = make_ctx(world())
    got = keep_tree(ctx)
    out = DVTSSearch(n=4, beam_width=2).run(ctx, problems(2))
    # Two subtrees (first steps {0, 1} and {2, 3}): one solution each, both kept.
    assert len(out[0].candidates) == 2
    firsts = sorted(ctx.policy.path(got["tree"], 0, c["node"])[0] for c in out[0].candidates)
    assert firsts[0] in (0, 1) and firsts[1] in (2, 3)
    assert out[0].answer == "opt"


# ---------------------------------------------------------------- mcts
MEANS = [0.5, 0.6, 0.7, 0.9, 0.4]  # action 3 is best; the policy's prior favours action 0


def bandit() -> ScriptedWorld:
    return ScriptedWorld(branching=5, depth=1, logprob=lambda p: 0.0 if p[-1] == 0 else -3.0,
                         score=lambda p: MEANS[p[-1]], answer=lambda p: str(p[-1]))


@pytest.mark.parametrize("K", [1, 4])
def test_mcts_converges_to_the_best_action(K):
    picks, shares = [], []
    for sims in (1, 4, 64, 128):
        ctx = make_ctx(bandit())
        got = keep_tree(ctx)
        out = MCTSSearch(simulations=sims, k=5, num_leaves=K, prior="logprob").run(ctx, problems(2))
        assert out[0].answer == out[1].answer
        picks.append(out[0].answer)
        cv = got["tree"].children_visits()[0, 0].float()
        shares.append(float(cv[3] / cv.sum()))
        assert ctx.policy.expand_calls == 1  # the root, once, for both problems
    assert picks[0] == "0"  # too few simulations: the prior's favourite
    assert picks[-2:] == ["3", "3"]
    assert shares[-1] > shares[1] > shares[0] - 1e-9 and shares[-1] > 0.5


def test_mcts_tree_invariants_and_values():
    ctx = make_ctx(world())
    got = keep_tree(ctx)
    MCTSSearch(simulations=20, k=3, num_leaves=2).run(ctx, problems(2))
    tree = got["tree"]
    agg = ctx.path_scores(tree)
    for b in range(2):
        used = int(tree.num_nodes[b])
        cv = tree.children_visits()[b, :used].sum(-1)
        term_mask = tree.terminal[b, :used]
        # One visit per evaluation: inner nodes add their subtree's; terminals are revisited.
        assert torch.equal(tree.visit_count[b, :used][~term_mask], (1 + cv)[~term_mask])
        assert bool((tree.visit_count[b, :used][term_mask] >= 1).all())
        assert int(tree.visit_count[b, :used][term_mask].sum()) > int(term_mask.sum())
        assert int(tree.vvisit.abs().sum()) == 0
        term = term_mask.nonzero().squeeze(1)
        # A terminal node's value is its PRM path aggregate, however often it was visited.
        assert torch.allclose(tree.node_value()[b, term], agg[b, term], atol=1e-5)
        # Every expanded node has all of its actions either expanded or invalid.
        ci, pr = tree.children_index[b, :used], tree.children_prior[b, :used]
        expanded = (ci >= 0).any(-1)
        assert bool(((ci >= 0) | (pr < 0))[expanded].all())
    # An iteration's K leaves of all problems go into one policy call: at most 10 calls.
    assert ctx.policy.expand_calls <= 10


def test_mcts_options_are_checked():
    for kw in ({"prior": "x"}, {"value": "x"}, {"final": "x"}, {"terminal_value": "x"}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            MCTSSearch(**kw)


# ---------------------------------------------------------------- tot
def dead_end_world() -> ScriptedWorld:
    # The evaluator prefers branch 0 (.9) over branch 1 (.8), but everything under branch 0
    # scores .2 (< threshold): DFS must backtrack to branch 1, whose greedy path is good.
    def score(p):
        if len(p) == 1:
            return (0.9, 0.8, 0.1)[p[0]]
        if p[0] == 0:
            return 0.2
        return 0.9 if p[0] == 1 and all(c == 0 for c in p[1:]) else 0.3

    return ScriptedWorld(branching=3, depth=3, logprob=lambda p: -float(p[-1]), score=score,
                         answer=lambda p: "good" if p == (1, 0, 0) else "".join(map(str, p)))


def test_tot_dfs_backtracks_from_a_dead_end():
    ctx = make_ctx(dead_end_world())
    got = keep_tree(ctx)
    search = ToTDFSSearch(proposals=3, threshold=0.5)
    out = search.run(ctx, problems(2))
    assert [r.answer for r in out] == ["good", "good"]
    order = [ctx.policy.path(got["tree"], 0, n) for n in search.expanded[0]]
    assert order == [(), (0,), (1,), (1, 0)]  # (0,) dead-ends, then back to (1,)
    assert ctx.policy.expand_calls == 4


def test_tot_dfs_step_limit_and_fallback():
    # A limit of 2 expanded states stops inside the dead end: no solution above the threshold;
    # the result falls back to what the tree holds (no crash, no answer above threshold).
    ctx = make_ctx(dead_end_world())
    out = ToTDFSSearch(proposals=3, threshold=0.5, step_limit=2).run(ctx, problems(1))
    assert ctx.policy.expand_calls == 2 and out[0].answer != "good"


def test_tot_bfs_keeps_t_of_b():
    ctx = make_ctx(world())
    got = keep_tree(ctx)
    ToTBFSSearch(proposals=4, keep=2).run(ctx, problems(1))
    tree = got["tree"]
    n = int(tree.num_nodes[0])
    per_depth = collections.Counter(tree.depth[0, 1:n].tolist())
    # 4 proposals at depth 1, then 2 kept states x 2 proposals per level.
    assert per_depth == {1: 4, 2: 4, 3: 4}
    expanded_d1 = [(tree.children_index[0, c] >= 0).any().item() for c in range(1, n)
                   if tree.depth[0, c] == 1]
    assert sum(expanded_d1) == 2


# ---------------------------------------------------------------- end to end (tiny HF models)
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from lrm_engine.models import save_tiny_llama

    root = tmp_path_factory.mktemp("search_family")
    pol = save_tiny_llama(root / "policy", hidden_size=32, initializer_range=0.2)
    prm = save_tiny_llama(root / "prm", seed=1, hidden_size=32, initializer_range=0.2)
    return pol, prm


E2E = {
    "lookahead": ["search.n=4", "search.beam_width=2", "search.lookahead=1"],
    "dvts": ["search.n=4", "search.beam_width=2"],
    "mcts": ["search.simulations=6", "search.k=2", "search.num_leaves=2", "search.value=rollout"],
    "tot_bfs": ["search.proposals=4", "search.keep=2"],
    "tot_dfs": ["search.proposals=2", "search.step_limit=4", "search.threshold=0.0"],
}


@pytest.mark.parametrize("name", sorted(E2E))
def test_end_to_end_on_tiny_models(name, tiny_models, tmp_path):
    # The HF policy (a node expanded once, all children, priors written) and a token PRM on
    # their KV stores, through the config and the search verb.
    from lrm_engine import build, compose
    from lrm_engine.verbs import search as verb

    pol, prm = tiny_models
    cfg = compose(["task=arith", "task.num_test=8", "task.num_train=8", "policy=hf",
                   f"policy.path={pol}", "policy.max_step_tokens=4", "reward=prm_token",
                   f"reward.path={prm}", f"search={name}", *E2E[name], "search_run.limit=2",
                   "search_run.max_steps=3", "search_run.batch_size=2",
                   f"runtime.output_dir={tmp_path}", "runtime.progress=false", "kernels=reference"])
    comps = build(cfg)
    summary = verb.main(cfg, comps)
    assert summary["problems"] == 2
    assert summary["policy_tokens_computed"] > 0 and summary["reward_tokens_computed"] > 0
    assert summary["tokens_reused"] > 0
