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


# ------------------------------------------------------------------------------ clipping, by hand
def test_grpo_clip_removes_the_gradient_on_the_clipped_side_only():
    from lrm_engine.objectives.grpo import grpo_loss

    # old log-probs 0; ratios exp(lp): row 0 (A=+1): 1.3499, 1.1052, 0.7408; row 1 (A=-1):
    # 1.3499, 0.7408, 1.1052. Clip range [1 - 0.2, 1 + 0.28] = [0.8, 1.28] (DAPO clip-higher).
    lp = torch.tensor([[0.3, 0.1, -0.3], [0.3, -0.3, 0.1]], requires_grad=True)
    A = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 3)
    loss, m = grpo_loss(lp, mask, A, old_logps=torch.zeros(2, 3), beta=0.0, epsilon=0.2,
                        epsilon_high=0.28, loss_type="grpo")
    loss.backward()
    r = [math.exp(0.3), math.exp(0.1), math.exp(-0.3)]
    # loss = (1/2) sum_i (1/3) sum_t -min(r A, clip(r) A): d/dlp = -A r / 6 where not clipped.
    # Clipped: row 0 token 0 (r = 1.35 > 1.28, A > 0) and row 1 token 1 (r = 0.74 < 0.8, A < 0).
    # r = 0.74 with A > 0 and r = 1.35 with A < 0 are on the pessimistic side: not clipped.
    want = [[0.0, -r[1] / 6, -r[2] / 6], [r[0] / 6, 0.0, r[1] / 6]]
    assert lp.grad.flatten().tolist() == pytest.approx(sum(want, []), abs=1e-6)
    hand = (-(1.28 + r[1] + r[2]) + (r[0] + 0.8 + r[1])) / 6
    assert float(loss.detach()) == pytest.approx(hand, abs=1e-6)
    assert (m["clip_low"], m["clip_high"], m["clip_ratio"]) == pytest.approx((1 / 6, 1 / 6, 2 / 6))
    # ε_high defaults to ε: a ratio of 1.25 with A > 0 is clipped at 1.2, not at 1.28.
    lp2 = torch.tensor([[math.log(1.25)]], requires_grad=True)
    for eps_high, grad, clipped in ((None, 0.0, 1.0), (0.28, -1.25, 0.0)):
        lp2.grad = None
        l2, m2 = grpo_loss(lp2, torch.ones(1, 1), torch.tensor([1.0]), old_logps=torch.zeros(1, 1),
                           beta=0.0, epsilon=0.2, epsilon_high=eps_high)
        l2.backward()
        assert float(lp2.grad) == pytest.approx(grad) and m2["clip_high"] == clipped


def test_ppo_policy_and_value_clipping_by_hand():
    from lrm_engine.objectives.ppo import ppo_loss

    # One row, two tokens. Policy: ratio exp(0.3) = 1.35 with A = +1 (clipped at 1.2: no
    # gradient) and exp(-0.3) = 0.74 with A = +1 (pessimistic side: gradient -A r / 2).
    # Values (ε_v = 0.2): token 0 V = 0.5, V_old = 0, R = 1: V_clip = 0.2, (V_clip - R)² = 0.64
    # > (V - R)² = 0.25, so the clipped term wins and V gets no gradient; token 1 V = 0.5,
    # V_old = 0, R = 0: (V - R)² = 0.25 > 0.04, unclipped: d/dV = vf_coef * (V - R) / 2.
    lp = torch.tensor([[0.3, -0.3]], requires_grad=True)
    v = torch.tensor([[0.5, 0.5]], requires_grad=True)
    loss, m = ppo_loss(lp, v, torch.ones(1, 2), torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]),
                       old_logps=torch.zeros(1, 2), old_values=torch.zeros(1, 2), cliprange=0.2,
                       cliprange_value=0.2, vf_coef=0.5)
    loss.backward()
    assert lp.grad.flatten().tolist() == pytest.approx([0.0, -math.exp(-0.3) / 2], abs=1e-6)
    assert v.grad.flatten().tolist() == pytest.approx([0.0, 0.5 * 0.5 / 2], abs=1e-6)
    pg = (-1.2 - math.exp(-0.3)) / 2
    vf = 0.5 * (0.64 + 0.25) / 2
    assert float(loss.detach()) == pytest.approx(pg + 0.5 * vf, abs=1e-6)
    assert (m["clip_frac"], m["value_clip_frac"]) == (0.5, 0.5)


def test_dr_grpo_takes_no_std_scaling():
    from lrm_engine.objectives.grpo import GRPOObjective

    batch = {"rewards": torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0]),
             "group_offsets": torch.tensor([0, 4, 6])}
    # group 1: mean 0.5 -> ±0.5; group 2: mean 2 -> ±1 (Dr. GRPO: r - mean, no division)
    dr = GRPOObjective(loss_type="dr_grpo", scale_rewards=True).advantages(batch)
    assert dr.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 1.0, -1.0])
    # grpo with scale_rewards: divided by the unbiased std + 1e-4: sqrt(1/3) and sqrt(2)
    g = GRPOObjective(loss_type="grpo", scale_rewards=True).advantages(batch)
    s1, s2 = math.sqrt(1 / 3) + 1e-4, math.sqrt(2.0) + 1e-4
    assert g.tolist() == pytest.approx([0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1, 1 / s2, -1 / s2], rel=1e-5)


# ------------------------------------------------------------------------------ passes per rollout
class FixedRollouts:
    """A rollout source of seeded random batches (position-keyed, resumable): 2 groups of 2."""

    def __init__(self, vocab: int, T: int = 8, prompt: int = 3):
        self.vocab, self.T, self.prompt, self.position, self.draws = vocab, T, prompt, 0, 0

    def next_batch(self):
        g = torch.Generator().manual_seed(1000 + self.position)
        ids = torch.randint(3, self.vocab, (4, self.T), generator=g)
        cm = torch.zeros(4, self.T, dtype=torch.long)
        cm[:, self.prompt:] = 1
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": cm,
                 "rewards": torch.tensor([1.0, 0.0, 0.0, 1.0]), "group_offsets": torch.tensor([0, 2, 4]),
                 "max_completion_length": self.T - self.prompt}
        self.position += 1
        self.draws += 1
        return batch, [self.position - 1]

    @property
    def epoch(self) -> float:
        return float(self.position)

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["position"])


def _model():
    from lrm_engine.models_tiny import make_tiny_llama

    return make_tiny_llama("micro", vocab_size=32, seed=0, num_hidden_layers=1)


def _loop(total_steps, **kw):
    from lrm_engine.train import TrainConfig

    return TrainConfig(total_steps=total_steps, micro_batch_size=4, lr=0.05, warmup_steps=0,
                       min_lr_ratio=1.0, device="cpu", progress=False, tensorboard=False,
                       save_every=1, keep_last=0, **kw)


def _train(objective, run_dir, total_steps, passes, grad_accum=1, source=None):
    from lrm_engine.train import Trainer
    from lrm_engine.train.rl_replay import ReplaySource
    from lrm_engine.train.rl_run import MetricsObjective

    model = _model()
    src = source or FixedRollouts(32)
    rep = ReplaySource(src, objective, model, passes=passes, grad_accum=grad_accum)
    steps, seen = [], []
    inner_loss = objective.loss

    def loss(model, batch):
        seen.append(batch)
        return inner_loss(model, batch)

    objective.loss = loss
    res = Trainer(model, MetricsObjective(objective), rep, _loop(total_steps, grad_accum=grad_accum), run_dir,
                  callbacks=[lambda s, m: steps.append(dict(m))]).train()
    return res, steps, seen, src, model


def test_grpo_num_iterations_reuses_old_logps_and_the_clip_acts(tmp_path):
    from lrm_engine.objectives.grpo import GRPOObjective, grpo_loss
    from lrm_engine.objectives.logprobs import token_logps

    obj = GRPOObjective(beta=0.0, epsilon=0.2, num_iterations=2)
    assert obj.rollout_passes == 2
    start = _model()
    res, steps, seen, src, _ = _train(obj, tmp_path / "run", total_steps=4, passes=2)
    assert src.draws == 2  # one generation per 2 optimiser steps
    assert [m["objective/rollout_pass"] for m in steps] == [0.0, 1.0, 0.0, 1.0]
    # old log-probs: computed once at rollout time by the sampling weights, the same in both passes
    assert seen[0]["old_logps"] is seen[1]["old_logps"]
    with torch.no_grad():
        want = token_logps(start, seen[0]["input_ids"], seen[0]["attention_mask"])
    assert torch.equal(seen[0]["old_logps"], want)
    # first pass: ratio exactly 1 (nothing clipped, the loss of the detached-current case)
    assert steps[0]["objective/clip_ratio"] == 0.0 and steps[2]["objective/clip_ratio"] == 0.0
    l_old, _ = grpo_loss(want, seen[0]["completion_mask"], obj.advantages(seen[0]),
                         old_logps=seen[0]["old_logps"], beta=0.0)
    l_cur, _ = grpo_loss(want, seen[0]["completion_mask"], obj.advantages(seen[0]), beta=0.0)
    assert float(l_old) == float(l_cur) == pytest.approx(steps[0]["objective/loss"])
    # second pass: the weights moved, ratios left [0.8, 1.2] and the clip removed tokens
    assert steps[1]["objective/clip_ratio"] > 0.0 and steps[3]["objective/clip_ratio"] > 0.0


def test_ppo_epochs_clip_policy_and_values(tmp_path):
    from lrm_engine.objectives.ppo import PPOObjective

    obj = PPOObjective(kl_coef=0.0, cliprange=0.2, cliprange_value=0.01, num_ppo_epochs=2)
    res, steps, seen, src, _ = _train(obj, tmp_path / "run", total_steps=2, passes=2)
    assert src.draws == 1 and seen[0]["old_values"] is seen[1]["old_values"]
    assert steps[0]["objective/clip_frac"] == 0.0 and steps[0]["objective/value_clip_frac"] == 0.0
    assert steps[1]["objective/clip_frac"] > 0.0 and steps[1]["objective/value_clip_frac"] > 0.0


def test_vineppo_epochs_clip(tmp_path):
    from lrm_engine.objectives.vineppo import VinePPOObjective

    class VineRollouts(FixedRollouts):
        def next_batch(self):
            b, i = super().next_batch()
            b["advantages"] = b["completion_mask"].float() * torch.tensor([[1.0], [-1.0], [0.5], [-0.5]])
            return b, i

    res, steps, _, _, _ = _train(VinePPOObjective(num_ppo_epochs=2), tmp_path / "run", 2, 2,
                                 source=VineRollouts(32))
    assert steps[0]["objective/clip_frac"] == 0.0 < steps[1]["objective/clip_frac"]


def test_grad_accum_replays_the_step_s_micro_batches_in_order(tmp_path):
    from lrm_engine.objectives.grpo import GRPOObjective

    _, steps, seen, src, _ = _train(GRPOObjective(beta=0.0, num_iterations=3), tmp_path / "run",
                                    total_steps=3, passes=3, grad_accum=2)
    assert src.draws == 2 and len(seen) == 6
    assert [int(b["input_ids"][0, 0]) for b in seen[2:4]] == [int(b["input_ids"][0, 0]) for b in seen[:2]]
    assert [b["old_logps"] for b in seen[4:]] == [b["old_logps"] for b in seen[:2]]
    assert [m["objective/rollout_pass"] for m in steps] == [0.0, 1.0, 2.0]


def test_resume_between_passes_replays_the_buffered_batch(tmp_path):
    from lrm_engine.objectives.grpo import GRPOObjective

    full, steps_full, _, _, m_full = _train(GRPOObjective(beta=0.0, num_iterations=2), tmp_path / "a",
                                            total_steps=3, passes=2)
    # interrupted after step 1 (pass 0 of the first generation), then resumed to step 3
    _train(GRPOObjective(beta=0.0, num_iterations=2), tmp_path / "b", total_steps=1, passes=2)
    res, steps, _, src, m_res = _train(GRPOObjective(beta=0.0, num_iterations=2), tmp_path / "b",
                                       total_steps=3, passes=2)
    assert res.resumed_from == 1 and src.draws == 1  # step 2 replayed the checkpointed batch
    assert [s["objective/clip_ratio"] for s in steps] == [s["objective/clip_ratio"] for s in steps_full[1:]]
    assert res.losses == full.losses[1:]
    for (n, p), (_, q) in zip(m_full.named_parameters(), m_res.named_parameters()):
        assert torch.equal(p, q), n
    # a run of another pass count refuses the checkpoint
    with pytest.raises(ValueError, match="passes changed"):
        _train(GRPOObjective(beta=0.0, num_iterations=3), tmp_path / "b", total_steps=4, passes=3)


def test_train_rollout_wraps_the_source_for_several_passes(tmp_path):
    import json

    from rl_fixtures import micro_models, small_task

    from lrm_engine.objectives.grpo import GRPOObjective
    from lrm_engine.train.rl_run import train_rollout

    task = small_task()
    pol, _ = micro_models(tmp_path / "models", task)
    seen = []
    res = train_rollout(tmp_path / "run", task=task, objective=GRPOObjective(beta=0.0, num_iterations=2),
                        model=pol, rollout=dict(prompts_per_batch=2, num_generations=4, max_new_tokens=12),
                        train=dict(total_steps=3, micro_batch_size=8, lr=1e-3, warmup_steps=0, device="cpu",
                                   progress=False, tensorboard=False, save_every=1),
                        evaluate=False, callbacks=[lambda s, m: seen.append(m)])
    assert res.steps == 3
    assert [m["objective/rollout_pass"] for m in seen] == [0.0, 1.0, 0.0]
    assert all("objective/clip_ratio" in m for m in seen)
    st = json.loads((tmp_path / "run" / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    # after step 3 (pass 0 of the second generation) the checkpoint holds the buffered batch
    assert st["data"]["replay"]["calls"] == 3 and len(st["data"]["replay"]["buffer"]) == 1
    assert st["data"]["source"]["position"] == 4  # two generations of 2 prompts
