"""`torchrun --nproc_per_node=2 -m lrm_engine train ...` (gloo, CPU) against one process.

Two ranks at micro batch 4 must train exactly what one process trains at micro batch 8: the
same per-step losses and final weights (1e-5), the same data log and summary line; rank 0 alone
writes; a checkpoint of 2 ranks resumes on 2 and on 1; a killed rank stops the other with one
line and the same command resumes; RL ranks generate for disjoint prompts; FSDP2 on a CPU mesh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run_lrm

SFT = ["objective=sft", "task=arith", "runtime.num_threads=1", "runtime.progress=false",
       "task.num_train=200", "task.num_test=40", "objective.model.size=micro",
       "objective.num_examples=64", "objective.train.total_steps=6",
       "objective.train.warmup_steps=1", "objective.train.save_every=2",
       "objective.train.keep_last=0"]
PRM = ["objective=prm", "task=arith", "objective.data=oracle", "runtime.num_threads=1",
       "runtime.progress=false", "task.num_train=200", "task.num_test=40",
       "objective.model.size=micro", "objective.num_records=48", "objective.eval.enabled=false",
       "objective.train.total_steps=4", "objective.train.warmup_steps=1",
       "objective.train.save_every=2"]


def torchrun(*args: str, nproc: int = 2, env: dict | None = None, timeout: float = 300):
    """``torchrun --standalone --nproc_per_node=<nproc> -m lrm_engine <args>`` (a free port)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "lrm_engine", *args], capture_output=True, text=True, env=full, timeout=timeout,
        cwd=REPO)


def summary(r) -> dict:
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout  # one summary line: rank 0's
    return json.loads(lines[0])


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_weights(a, b, tol=1e-5):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert diff < tol, diff


def losses(run_dir) -> list[float]:
    return json.loads((Path(run_dir) / "result.json").read_text())["losses"]


def data_log(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "data_log.jsonl").read_text().splitlines()]


def files(run_dir) -> list[str]:
    """Files under a run folder, TensorBoard event files named by kind (their names hold a pid)."""
    out = []
    for p in sorted(Path(run_dir).rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(run_dir))
            out.append("tb/<events>" if rel.startswith("tb/") else rel)
    return out


def same_summary(one: dict, two: dict, root_one: Path, root_two: Path) -> None:
    """The summary lines agree: every field (paths relative to their output roots), losses to
    1e-5; wall time and throughput are measured, not compared."""
    for k in one:
        if k in ("wall_s", "tokens_per_s"):
            continue
        a, b = one[k], two[k]
        if isinstance(a, float):
            assert abs(a - b) < 1e-5, (k, a, b)
        elif isinstance(a, str) and a.startswith(str(root_one)):
            assert Path(a).relative_to(root_one) == Path(b).relative_to(root_two), k
        else:
            assert a == b, (k, a, b)
    assert one.keys() == two.keys()


@pytest.fixture(scope="module")
def sft_one(tmp_path_factory):
    """The reference: one process at micro batch 8, uninterrupted."""
    root = tmp_path_factory.mktemp("sft1")
    return root, summary(run_lrm("train", *SFT, "objective.train.micro_batch_size=8",
                                 f"runtime.output_dir={root}", timeout=300))


def test_sft_two_ranks_at_4_equal_one_process_at_8(sft_one, tmp_path):
    root1, one = sft_one
    two = summary(torchrun("train", *SFT, "objective.train.micro_batch_size=4",
                           f"runtime.output_dir={tmp_path}"))
    same_summary(one, two, root1, tmp_path)
    # the run folder name hashes the global micro-batch: 2 x 4 and 1 x 8 are one run
    assert Path(two["run_dir"]).name == Path(one["run_dir"]).name
    l1, l2 = losses(one["run_dir"]), losses(two["run_dir"])
    assert len(l1) == len(l2) == 6 and max(abs(a - b) for a, b in zip(l1, l2)) < 1e-5
    assert_same_weights(one["model_dir"], two["model_dir"])
    assert_same_weights(Path(one["run_dir"]) / "checkpoints/step_4",
                        Path(two["run_dir"]) / "checkpoints/step_4")
    # the data log lists the single-process order; its "ranks" split each step in two
    # disjoint halves of 4 units, rank 0 the first
    d1, d2 = data_log(one["run_dir"]), data_log(two["run_dir"])
    assert [r["examples"] for r in d1] == [r["examples"] for r in d2]
    for r in d2:
        a, b = r["ranks"]
        assert len(a) == len(b) == 4 and not set(a) & set(b) and a + b == r["examples"]
    # rank 0 alone wrote: the same files as one process (one TensorBoard event file)
    assert files(one["run_dir"]) == files(two["run_dir"])
    assert files(two["run_dir"]).count("tb/<events>") == 1


def test_killed_rank_stops_the_other_and_the_same_command_resumes_on_2_and_on_1(sft_one, tmp_path):
    root1, one = sft_one
    cmd = ["train", *SFT, "objective.train.micro_batch_size=4", f"runtime.output_dir={tmp_path}"]
    # rank 1 dies right after step 3 (checkpoint step_2 exists)
    r = torchrun(*cmd, env={"LRM_TEST_EXIT_AFTER_STEP": "1:3"})
    assert r.returncode != 0 and r.stdout.strip() == ""
    lines = [x for x in r.stderr.splitlines() if x.startswith("lrm train: rank 0 of 2 stopped")]
    assert len(lines) == 1, r.stderr[-3000:]
    assert "step_2" in lines[0] and "the same command resumes" in lines[0]
    assert "Traceback" not in "\n".join(x for x in r.stderr.splitlines() if "lrm_engine" in x)
    run = Path(one["run_dir"]).name
    ck = sorted(p.name for p in (tmp_path / "train" / run / "checkpoints").iterdir())
    assert ck == ["step_2"]
    # N -> N: the same command resumes and ends where the uninterrupted run did
    again = summary(torchrun(*cmd))
    assert again["resumed_from"] == 2 and again["steps"] == 6
    assert_same_weights(one["model_dir"], again["model_dir"])
    assert [r["examples"] for r in data_log(again["run_dir"])] == \
        [r["examples"] for r in data_log(one["run_dir"])]
    # N -> 1: a 2-rank checkpoint resumes on one process at micro batch 8 (same global batch)
    (tmp_path / "one").mkdir()
    root = tmp_path / "one"
    import shutil

    shutil.copytree(tmp_path / "train" / run / "checkpoints" / "step_2",
                    root / "train" / run / "checkpoints" / "step_2")
    shutil.copytree(tmp_path / "train" / run / "tokenizer", root / "train" / run / "tokenizer")
    solo = summary(run_lrm("train", *SFT, "objective.train.micro_batch_size=8",
                           f"runtime.output_dir={root}", timeout=300))
    assert solo["resumed_from"] == 2 and solo["steps"] == 6
    assert_same_weights(one["model_dir"], solo["model_dir"])


def test_prm_two_ranks_equal_one_process(tmp_path):
    one = summary(run_lrm("train", *PRM, "objective.train.micro_batch_size=8",
                          f"runtime.output_dir={tmp_path / 'a'}", timeout=300))
    two = summary(torchrun("train", *PRM, "objective.train.micro_batch_size=4",
                           f"runtime.output_dir={tmp_path / 'b'}"))
    same_summary(one, two, tmp_path / "a", tmp_path / "b")
    l1, l2 = losses(one["run_dir"]), losses(two["run_dir"])
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-5
    assert_same_weights(one["model_dir"], two["model_dir"])
    assert files(one["run_dir"]) == files(two["run_dir"])


def test_dpo_two_ranks_equal_one_process(tmp_path):
    rows = [{"prompt": f"{a}+{b}=\n", "chosen": f"{a}+{b}={a + b}\nAnswer: {a + b}",
             "rejected": f"{a}+{b}={a + b + 1}\nAnswer: {a + b + 1}"}
            for a in range(4) for b in range(4)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = ["train", "objective=dpo", "task=arith", f"objective.data='{data}'",
            "runtime.num_threads=1", "runtime.progress=false", "objective.model.size=micro",
            "objective.train.total_steps=3", "objective.train.warmup_steps=0",
            "objective.train.save_every=3"]
    one = summary(run_lrm(*args, "objective.train.micro_batch_size=4",
                          f"runtime.output_dir={tmp_path / 'a'}", timeout=300))
    two = summary(torchrun(*args, "objective.train.micro_batch_size=2",
                           f"runtime.output_dir={tmp_path / 'b'}"))
    same_summary(one, two, tmp_path / "a", tmp_path / "b")
    l1, l2 = losses(one["run_dir"]), losses(two["run_dir"])
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-5
    assert_same_weights(one["model_dir"], two["model_dir"])


def test_grpo_ranks_generate_for_disjoint_prompts(tmp_path):
    from rl_fixtures import micro_models, small_task

    pol, _ = micro_models(tmp_path / "models", small_task())
    env = {"LRM_DEFAULT_POLICY": pol}
    args = ["train", "objective=grpo", "task=arith", "task.min_steps=2", "task.max_steps=2",
            "task.max_operand=9", "task.max_value=99", "task.num_train=64", "task.num_test=16",
            "task.shape=chain", "runtime.num_threads=1", "runtime.progress=false",
            "objective.train.total_steps=2", "objective.train.micro_batch_size=8",
            "objective.train.warmup_steps=0", "objective.train.save_every=2",
            "objective.rollout.num_generations=4", "objective.rollout.max_new_tokens=16",
            "objective.eval.enabled=false"]
    one = summary(run_lrm(*args, "objective.rollout.prompts_per_batch=4",
                          f"runtime.output_dir={tmp_path / 'a'}", env=env, timeout=300))
    two = summary(torchrun(*args, "objective.rollout.prompts_per_batch=2",
                           f"runtime.output_dir={tmp_path / 'b'}", env=env))
    assert two["steps"] == 2
    d1, d2 = data_log(one["run_dir"]), data_log(two["run_dir"])
    for s1, s2 in zip(d1, d2, strict=True):
        a, b = s2["ranks"]
        assert len(a) == len(b) == 2 and not set(a) & set(b)  # no duplicated rollouts
        assert sorted(a + b) == sorted(s1["examples"])  # together: the single-process prompts
    ck = json.loads((Path(two["run_dir"]) / "checkpoints/step_2/trainer_state.json").read_text())
    assert ck["data"]["position"] == 8 and ck["data"]["prompts_per_batch"] == 4


def test_fsdp_on_a_cpu_mesh_of_2(sft_one, tmp_path):
    root1, one = sft_one
    two = summary(torchrun("train", *SFT, "objective.train.micro_batch_size=4",
                           "objective.train.strategy=fsdp", f"runtime.output_dir={tmp_path}"))
    l1, l2 = losses(one["run_dir"]), losses(two["run_dir"])
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-5
    assert_same_weights(one["model_dir"], two["model_dir"])
    # its checkpoints have the one layout (full weights, index-keyed optimizer state)
    c1, c2 = Path(one["run_dir"]) / "checkpoints/step_4", Path(two["run_dir"]) / "checkpoints/step_4"
    assert_same_weights(c1, c2)
    o1, o2 = load_file(str(c1 / "optimizer.safetensors")), load_file(str(c2 / "optimizer.safetensors"))
    assert o1.keys() == o2.keys()
    assert max(float((o1[k] - o2[k]).abs().max()) for k in o1) < 1e-5
    # and it resumes: rank 1 dies after step 5, the same command ends at step 6 from step_4
    cmd = ["train", *SFT, "objective.train.micro_batch_size=4", "objective.train.strategy=fsdp",
           f"runtime.output_dir={tmp_path / 'again'}"]
    assert torchrun(*cmd, env={"LRM_TEST_EXIT_AFTER_STEP": "1:5"}).returncode != 0
    again = summary(torchrun(*cmd))
    assert again["resumed_from"] == 4 and again["steps"] == 6
    assert_same_weights(one["model_dir"], again["model_dir"])


def test_strategy_is_checked():
    r = run_lrm("train", *SFT, "objective.train.strategy=zero3")
    assert r.returncode == 2 and "objective.train.strategy='zero3'" in r.stderr
    assert "ddp, fsdp" in r.stderr and "Traceback" not in r.stderr
