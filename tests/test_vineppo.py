"""vineppo: golden step/token advantages from given values, the clipped loss by hand, and one
training step on trajectories + MC values drawn through the tree engine."""

import math

import pytest
import torch

from lrm_engine.objectives.vineppo import (VinePPOObjective, step_advantages, token_advantages,
                                           vineppo_loss)

torch.set_num_threads(1)


def test_step_advantages_golden():
    # V(s_0)=0.25, V(s_1)=0.5, V(s_2)=1.0, reward 0  ->  A = [0.25, 0.5, -1.0]
    assert step_advantages([0.25, 0.5, 1.0], 0.0) == [0.25, 0.5, -1.0]
    # one step: A_0 = r - V(s_0)
    assert step_advantages([0.75], 1.0) == [0.25]


def test_token_advantages_golden():
    # row 0: prompt of 2 tokens, steps of 3 and 2 tokens; row 1: prompt of 1 token, one 2-token step
    adv = token_advantages([[3, 2], [2]], [[0.5, -0.25], [1.0]], [2, 1], T=7)
    want = torch.tensor([[0, 0, 0.5, 0.5, 0.5, -0.25, -0.25],
                         [0, 1.0, 1.0, 0, 0, 0, 0]])
    assert torch.equal(adv, want)
    with pytest.raises(ValueError):
        token_advantages([[3]], [[0.1, 0.2]], [0], T=5)


def test_clipped_loss_by_hand():
    lp = torch.tensor([[0.0, math.log(0.5), math.log(0.5)]], requires_grad=True)
    old = torch.tensor([[0.0, math.log(0.25), math.log(0.5)]])  # ratios: -, 2.0, 1.0
    mask = torch.tensor([[0, 1, 1]])
    A = torch.tensor([[0.0, 1.0, -2.0]])
    loss, m = vineppo_loss(lp, mask, A, old_logps=old, epsilon=0.2)
    # token 1: max(-1*2, -1*1.2) = -1.2 ; token 2: max(2*1, 2*1) = 2 ; mean over 2 tokens = 0.4
    assert loss.item() == pytest.approx(0.4)
    assert m["clip_frac"] == pytest.approx(0.5)
    loss.backward()
    # d/dlp: token 1 clipped -> 0; token 2: -A * ratio / n = 2 * 1 / 2 = 1
    assert lp.grad.tolist()[0] == pytest.approx([0.0, 0.0, 1.0])
    # fully masked: zero loss, no NaN
    z, _ = vineppo_loss(lp, torch.zeros_like(mask), A)
    assert z.item() == 0.0


def test_vine_rollouts_and_one_step(tmp_path):
    from lrm_engine.models_tiny import make_tiny_llama
    from lrm_engine.tokenization import build_char_tokenizer
    from lrm_engine.train import TrainConfig, Trainer
    from lrm_engine.train.rl_run import MetricsObjective
    from lrm_engine.train.vine import VineRolloutSource
    from rl_fixtures import small_task

    task = small_task()
    tok = build_char_tokenizer(extra_chars=task.step.delimiter + task.step.answer_prefix)
    model = make_tiny_llama("micro", tokenizer=tok, seed=0, num_hidden_layers=1)
    src = VineRolloutSource(model, tok, task, prompts_per_batch=2, num_generations=2, mc_rollouts=2,
                            max_steps=3, max_step_tokens=6, seed=0)
    batch, idx = src.next_batch()
    assert batch["group_offsets"].tolist() == [0, 2, 4] and len(idx) == 2
    adv, cm = batch["advantages"], batch["completion_mask"]
    assert bool((adv[cm == 0] == 0).all())
    # the two groups share s_0: at most (steps) unique states, s_0 deduplicated within a group
    assert batch["log"]["mc_dedup"] > 0 and batch["log"]["mc_states"] >= 2
    src.position = 0
    cfg = TrainConfig(total_steps=1, micro_batch_size=4, lr=1e-3, warmup_steps=0, device="cpu",
                      progress=False, tensorboard=False)
    res = Trainer(model, MetricsObjective(VinePPOObjective(beta=0.04)), src, cfg, tmp_path).train()
    assert res.steps == 1 and math.isfinite(res.losses[0])
    assert {"objective/accuracy", "objective/kl", "objective/mc_states"} <= set(res.metrics)
