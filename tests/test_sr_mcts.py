"""`sr_mcts` (LLaMA-Berry: critique + rewrite of whole solutions, pairwise EBC values, UCT) and
`compute_optimal` (difficulty probe, token budget spread, best-of-N easy / beam hard) on scripted
worlds with known optima; both end to end on tiny random models (Python and `lrm search`)."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict

import pytest
import torch

from lrm_engine.core.engine import SearchContext
from lrm_engine.core.interfaces import Problem, StepConvention
from lrm_engine.core.tree import BatchedTree
from lrm_engine.rewards.pairwise import PairwiseReward
from lrm_engine.testing import ScriptedCounters, ScriptedPolicy, ScriptedResult, ScriptedReward, ScriptedWorld


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- sr_mcts, scripted


class PromptPolicy:
    """A Policy whose whole solution is a function of the prompt: ``solve(prompt) -> steps``."""

    def __init__(self, solve):
        self.solve = solve
        self.counters = ScriptedCounters()
        self.prompts: list[str] = []
        self._steps: dict = {}
        self._depth: dict = {}

    def init_roots(self, tree, prompts):
        for b, p in enumerate(prompts):
            self.prompts.append(p)
            self._steps[(id(tree), b)] = self.solve(p)
            self._depth[(id(tree), b, 0)] = 0

    def expand(self, tree, nodes, k, sampling=None):
        from lrm_engine import ops

        nodes = torch.as_tensor(nodes, dtype=torch.int32)
        B, M = nodes.shape
        leaf = nodes.repeat_interleave(k, dim=1)
        action = torch.full((B, M, k), -1, dtype=torch.int32)
        for b in range(B):
            for j in range(M):
                n = int(nodes[b, j])
                if n >= 0 and self._depth[(id(tree), b, n)] < len(self._steps[(id(tree), b)]):
                    action[b, j, 0] = 0  # one continuation per node
        action = action.view(B, M * k)
        prior = torch.full((B, M * k, tree.num_actions), 1.0 / tree.num_actions)
        made = ops.expand(tree, leaf, action, prior, None, grow=True).view(B, M, k)
        made = torch.where(action.view(B, M, k) >= 0, made, -1)
        lps, fin, flat = [], [], []
        for b in range(B):
            for j in range(M):
                n = int(nodes[b, j])
                if n < 0:
                    continue
                c = int(made[b, j, 0])
                row_c = [c] + [-1] * (k - 1)
                if c >= 0:
                    d = self._depth[(id(tree), b, n)] + 1
                    self._depth[(id(tree), b, c)] = d
                    tree.terminal[b, c] = d >= len(self._steps[(id(tree), b)])
                    self.counters.tokens_computed += 1
                lps.append([0.0] + [math.nan] * (k - 1))
                fin.append([c >= 0 and bool(tree.terminal[b, c])] + [True] * (k - 1))
                flat.append(row_c)
        return ScriptedResult(children=torch.tensor(flat, dtype=torch.int32).view(-1, k),
                              logprob_sum=torch.tensor(lps).view(-1, k),
                              finished=torch.tensor(fin).view(-1, k), children_bt=made)

    def text(self, tree, b, n, with_prompt=False):
        d = self._depth[(id(tree), b, n)]
        return "".join(s + "\n" for s in self._steps[(id(tree), b)][:d])

    def release(self, tree):
        pass


# Quality of every solution id (a rewrite of <id> made r-th is <id>.<r>); only 0.1.0 answers 42.
# The greedy path (always refine the currently best solution) goes 0 -> 0.0 -> 0.0.x; the best
# rewrite sits under the *weaker* first rewrite 0.1, so finding it takes UCT exploration.
QUALITY = {"0": 1, "0.0": 3, "0.1": 2, "0.0.0": 4, "0.0.1": 1, "0.1.0": 9, "0.1.1": 0}


def rewrite_world():
    count: dict = defaultdict(int)

    def solve(prompt: str) -> list[str]:
        if "Review the solution" in prompt:
            return ["critique: the second step is wrong"]
        pid = re.search(r"Problem (\w+)\s*$", prompt).group(1)
        if "Rewrite the solution" in prompt:
            parent = re.search(r"Previous solution:\nsol \w+/(\S+)", prompt).group(1)
            sid = f"{parent}.{count[(pid, parent)]}"
            count[(pid, parent)] += 1
        else:
            sid = "0"
        return [f"sol {pid}/{sid} q={QUALITY.get(sid, 0)}", f"Answer: {42 if sid == '0.1.0' else 5}"]

    return solve


def quality_judge(calls):
    def judge(questions, first, second):
        calls.append(len(first))
        q = [(int(re.search(r"q=(\d+)", a).group(1)), int(re.search(r"q=(\d+)", b).group(1)))
             for a, b in zip(first, second)]
        return torch.tensor([0.9 if x > y else 0.1 if x < y else 0.5 for x, y in q])

    return judge


def _sr_ctx(calls):
    pol = PromptPolicy(rewrite_world())
    ctx = SearchContext(policy=pol, step=StepConvention(), prompt=lambda p: f"Problem {p.id}\n",
                        reward=PairwiseReward(quality_judge(calls)), max_steps=4)
    return pol, ctx


def test_sr_mcts_finds_the_best_rewrite_by_exploration():
    from lrm_builtin.search.sr_mcts import SRMCTSSearch

    probs = [Problem(id="P1", question="q1"), Problem(id="P2", question="q2")]
    calls: list = []
    pol, ctx = _sr_ctx(calls)
    out = SRMCTSSearch(iterations=4, max_children=2, c_uct=1.4).run(ctx, probs)
    for r in out:
        assert r.answer == "42" and "/0.1.0 q=9" in r.solution
        assert r.score == pytest.approx(1.0)  # best in the global EBC ranking
        ids = [re.search(r"/(\S+) q", c["text"]).group(1) for c in r.candidates]
        assert ids == ["0", "0.0", "0.1", "0.0.0", "0.1.0"]  # the order the search built them
        assert [c["parent"] for c in r.candidates] == [-1, 0, 0, 1, 2]
        assert r.candidates[0]["visits"] == 5
    # One pairwise judge call per iteration for the whole batch (+ one for the initial roots,
    # which has nothing to compare): each new node vs every older node, both orders.
    assert calls == [2 * 2 * n for n in (1, 2, 3, 4)]
    # The rewrite prompts carry the selected solution and the policy's critique.
    rew = [p for p in pol.prompts if "Rewrite the solution" in p]
    assert len(rew) == 8 and all("critique: the second step is wrong" in p for p in rew)
    assert any("Previous solution:\nsol P1/0.1 q=2" in p for p in rew)

    # Without exploration (c_uct = 0) the search keeps refining the greedy branch.
    _, ctx0 = _sr_ctx([])
    out0 = SRMCTSSearch(iterations=4, max_children=2, c_uct=0.0).run(ctx0, probs[:1])
    assert out0[0].answer == "5"


def test_sr_mcts_needs_a_pairwise_reward():
    from lrm_builtin.search.sr_mcts import SRMCTSSearch

    world = ScriptedWorld(branching=2, depth=2, logprob=lambda p: 0.0, score=lambda p: 0.5, answer=lambda p: "1")
    ctx = SearchContext(policy=ScriptedPolicy(world), step=StepConvention(), prompt=lambda p: p.question,
                        reward=ScriptedReward(world))
    with pytest.raises(ValueError, match="reward=pairwise"):
        SRMCTSSearch(iterations=1).run(ctx, [Problem(id="x", question="x")])


# ----------------------------------------------------------------------------- compute_optimal


class MultiWorldPolicy(ScriptedPolicy):
    """ScriptedPolicy whose paths start with the problem's index (read from the prompt), so one
    world holds a different subtree per problem."""

    def init_roots(self, tree, prompts):
        for b, p in enumerate(prompts):
            self._paths[(id(tree), b, BatchedTree.ROOT)] = (int(p),)


def _score(path):
    pid, steps = path[0], path[1:]
    if pid == 0:  # easy: the most likely chains are right; the PRM over-rates a wrong first step
        if steps[0] == 3:
            return 0.95 if len(steps) == 1 else 0.6
        return 0.8
    good = steps[:2] == (2, 1)[: len(steps[:2])]  # hard: only the path 2 -> 1 is right
    return 0.9 if good else 0.3


def _answer(path):
    pid, steps = path[0], path[1:]
    if pid == 0:
        return "99" if steps[0] == 3 else "7"
    return "7" if steps[:2] == (2, 1) else "3"


def _co_run(search):
    world = ScriptedWorld(branching=4, depth=4, logprob=lambda p: -float(p[-1]), score=_score, answer=_answer)
    ctx = SearchContext(policy=MultiWorldPolicy(world), step=StepConvention(), prompt=lambda p: p.question,
                        reward=ScriptedReward(world), max_steps=3)
    probs = [Problem(id="easy", question="0"), Problem(id="hard", question="1")]
    out = search.run(ctx, probs)
    c = ctx.counters()
    tokens = c["policy_tokens_computed"] + c["reward_tokens_computed"]
    return sum(r.answer == "7" for r in out) / len(out), tokens, out


def test_compute_optimal_beats_uniform_allocation_at_equal_tokens():
    from lrm_builtin.search.beam import BeamSearch
    from lrm_builtin.search.compute_optimal import ComputeOptimalSearch, spread
    from lrm_builtin.search.sampled import BestOfNSearch

    acc_bon, tok_bon, _ = _co_run(BestOfNSearch(n=4, choice="weighted"))
    acc_beam, tok_beam, _ = _co_run(BeamSearch(n=4, beam_width=4))
    co = ComputeOptimalSearch(n=4, probe_n=2)
    acc_co, tok_co, out = _co_run(co)
    # Uniform best-of-4 solves only the easy question, uniform beam@4 only the hard one.
    assert (acc_bon, acc_beam) == (0.5, 0.5)
    assert (tok_bon, tok_beam) == (48, 48)
    # Probe: 2 x 3 steps per problem (policy + PRM) = 24 tokens, 6 per solution; budget 2 x 4 x 6
    # = 48; 4 solutions left, spread by difficulty + 0.1 = (0.3, 0.8) -> (1, 3).
    alloc = {a["id"]: a for a in co.last_allocation}
    assert alloc["easy"]["difficulty"] == pytest.approx(0.2) and alloc["easy"]["kind"] == "best_of_n"
    assert alloc["hard"]["difficulty"] == pytest.approx(0.7) and alloc["hard"]["kind"] == "beam"
    assert (alloc["easy"]["share"], alloc["hard"]["share"]) == (1, 3)
    assert acc_co == 1.0 >= max(acc_bon, acc_beam)
    assert tok_co <= min(tok_bon, tok_beam)
    assert [c["pass"] for c in out[0].candidates] == ["probe", "probe", "extra"]
    assert spread(4, [0.3, 0.8]) == [1, 3] and spread(0, [1.0]) == [0] and sum(spread(7, [1, 1, 1])) == 7


# ----------------------------------------------------------------------------- tiny real models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lrm_engine.models import save_tiny_llama

    root = tmp_path_factory.mktemp("sr_tiny")
    return {"policy": save_tiny_llama(root / "policy", hidden_size=32, num_layers=1, initializer_range=0.3),
            "judge": save_tiny_llama(root / "judge", seed=1, hidden_size=32, num_layers=1, initializer_range=0.3)}


def test_sr_mcts_and_compute_optimal_run_on_tiny_models(tiny):
    from lrm_builtin.search.compute_optimal import ComputeOptimalSearch
    from lrm_builtin.search.sr_mcts import SRMCTSSearch

    from lrm_engine.models import SamplingConfig
    from lrm_engine.models.hf_policy import HFPolicy
    from lrm_engine.plugin_manager import registries
    from lrm_engine.rewards.factories import make_prm_token
    from lrm_engine.rewards.family_factories import make_pairwise

    task = registries()["task"].create("arith", num_train=2, num_test=2)
    probs = [e.problem for e in task.examples("test")]
    pol = HFPolicy.from_config(tiny["policy"], step=task.step, max_step_tokens=4)
    pw = make_pairwise(path=str(tiny["judge"]), max_prompt_tokens=256)
    ctx = SearchContext(policy=pol, step=task.step, prompt=task.prompt, reward=pw,
                        sampling=SamplingConfig(seed=0), max_steps=2)
    out = SRMCTSSearch(iterations=2, critique_steps=1).run(ctx, probs)
    assert len(out) == 2 and all(len(r.candidates) == 3 for r in out)
    assert all(0.0 < c["score"] <= 1.0 for r in out for c in r.candidates)
    assert pw.counters.tokens_computed > 0 and pw.comparisons == 2 * 2 * (1 + 2)

    ctx2 = SearchContext(policy=pol, step=task.step, prompt=task.prompt,
                         reward=make_prm_token(path=str(tiny["judge"])), sampling=SamplingConfig(seed=0),
                         max_steps=2)
    out2 = ComputeOptimalSearch(n=3, probe_n=2, beam_width=2).run(ctx2, probs)
    assert len(out2) == 2 and all(r.candidates for r in out2)


def test_lrm_search_sr_mcts_with_pairwise(tiny, tmp_path):
    from conftest import run_lrm

    out = tmp_path / "run"
    r = run_lrm("search", "task=arith", "task.num_test=2", "task.num_train=2", "policy=hf",
                f"policy.path={tiny['policy']}", "policy.max_step_tokens=4", "reward=pairwise",
                f"reward.path={tiny['judge']}", "search=sr_mcts", "search.iterations=1",
                "search.critique_steps=1", "search_run.limit=2", "search_run.max_steps=2",
                f"runtime.output_dir={out}", "runtime.progress=false", "runtime.num_threads=1",
                "kernels=reference", env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(len(x["candidates"]) == 2 and "correct" in x for x in recs)
    assert recs[0]["counters"]["policy_tokens_computed"] > 0
