"""`lrm train objective=grpo` from the CLI at micro size: starts from the (embedded default) SFT
policy, verifier rewards, accuracy/KL logged, greedy eval before/after, resume."""

import json
from pathlib import Path

import torch

from conftest import run_lrm
from rl_fixtures import micro_models, small_task

torch.set_num_threads(1)

TASK = ["task=arith", "task.min_steps=2", "task.max_steps=2", "task.max_operand=9",
        "task.max_value=99", "task.num_train=64", "task.num_test=16", "task.shape=chain"]
TINY = ["runtime.num_threads=1", "runtime.progress=false", "objective.train.total_steps=2",
        "objective.train.micro_batch_size=8", "objective.train.warmup_steps=0",
        "objective.train.save_every=1", "objective.rollout.prompts_per_batch=2",
        "objective.rollout.num_generations=4", "objective.rollout.max_new_tokens=16",
        "objective.eval.num_problems=4", "objective.eval.max_steps=3",
        "objective.eval.max_step_tokens=8"]


def test_grpo_from_the_default_policy_via_cli(tmp_path):
    pol, _ = micro_models(tmp_path / "models", small_task())
    env = {"LRM_DEFAULT_POLICY": pol}
    r = run_lrm("train", "objective=grpo", f"runtime.output_dir={tmp_path}", *TASK, *TINY,
                env=env, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["steps"] == 2 and res["init"] == pol
    assert {"reward", "accuracy", "kl"} <= set(res)
    assert 0.0 <= res["eval"]["before"]["accuracy"] <= 1.0 and res["eval"]["after"]["problems"] == 4
    run = Path(res["run_dir"])
    assert (run / "model" / "model.safetensors").is_file() and any((run / "tb").iterdir())
    ck = json.loads((run / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert ck["data"]["position"] == 4  # the rollout source's state is in the checkpoint
    # rerunning the same command resumes the finished run (no new steps)
    r2 = run_lrm("train", "objective=grpo", f"runtime.output_dir={tmp_path}", *TASK, *TINY,
                 env=env, timeout=150)
    res2 = json.loads(r2.stdout.strip().splitlines()[-1])
    assert res2["resumed_from"] == 2 and res2["run_dir"] == res["run_dir"]
    # no default policy: a clear usage error
    r3 = run_lrm("train", "objective=grpo", f"runtime.output_dir={tmp_path}", *TASK, *TINY,
                 env={"LRM_DEFAULT_POLICY": str(tmp_path / "nowhere")}, timeout=60)
    assert r3.returncode != 0 and "lrm run" in r3.stderr
