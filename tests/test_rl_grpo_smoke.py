"""GRPO RL skeleton: groups sampled by the policy, arith-verifier rewards, one optimisation step."""

import math

import torch

from lrm_builtin.tasks import ArithTask
from lrm_engine.models_tiny import make_tiny_llama
from lrm_engine.objectives.grpo import GRPOObjective
from lrm_engine.tokenization import build_char_tokenizer
from lrm_engine.train import TrainConfig, Trainer
from lrm_engine.train.rl import GroupRolloutSource

torch.set_num_threads(1)


def test_grpo_one_step_on_sampled_groups(tmp_path):
    task = ArithTask(num_train=20, num_test=5)
    tok = build_char_tokenizer(extra_chars=task.step.delimiter + task.step.answer_prefix)
    model = make_tiny_llama("micro", tokenizer=tok, seed=0, num_hidden_layers=1)
    src = GroupRolloutSource(model, tok, task, prompts_per_batch=2, num_generations=3,
                             max_new_tokens=12, seed=0)
    batch, idx = src.next_batch()
    assert batch["group_offsets"].tolist() == [0, 3, 6] and len(idx) == 2
    assert set(batch["rewards"].tolist()) <= {0.0, 1.0}
    assert int(batch["completion_mask"].sum(-1).max()) <= 12
    # the verifier: the gold solution of a problem earns reward 1
    ex = src.examples[idx[0]]
    assert task.grade(ex, task.step.join_steps(ex.solution_steps))
    src.position = 0
    cfg = TrainConfig(total_steps=1, micro_batch_size=1, lr=1e-3, warmup_steps=0, device="cpu",
                      progress=False, tensorboard=False)
    res = Trainer(model, GRPOObjective(beta=0.04, loss_type="dapo"), src, cfg, tmp_path).train()
    assert res.steps == 1 and math.isfinite(res.losses[0])
    assert {"objective/kl", "objective/reward", "objective/zero_std_frac"} <= set(res.metrics)
