"""A corpus of user mistakes, each run through the real `lrm` command in a subprocess.

Every case must end with exit code 2, exactly one line on stderr (``lrm <verb>: ...``) that
names the field or file, the value and what is allowed, and no traceback anywhere. Mistakes in
the configuration fail when it is composed (lrm_engine/validation.py), so those cases need no
model; the cases about model folders, devices and the output folder fail where the thing is
built or loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = Path(os.environ.get("LRM_CACHE", "/work/lrm_cache")) / "default" / "policy"

SEARCH = ["search", "task=arith", "policy=hf", "search=greedy", "kernels=reference"]
BEAM = ["search", "task=arith", "policy=hf", "reward=prm_token", "search=beam", "kernels=reference"]


def lrm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "lrm_engine", *args], capture_output=True,
                          text=True, env=full, timeout=300, cwd=REPO)


def assert_one_line(r: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit 2, one stderr line holding every ``expected`` text, nothing on stdout, no traceback."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert r.stdout == ""
    return lines[0]


# --------------------------------------------------------------------- at compose time (no model)

COMPOSE_CASES = [
    # zero / negative budgets
    (["search", "task=arith", "policy=hf", "search=majority", "search.n=0"],
     "lrm search: search.n=0: must be an integer >= 1"),
    (BEAM + ["search.beam_width=0"], "search.beam_width=0: must be an integer >= 1"),
    (["search", "task=arith", "policy=hf", "reward=prm_token", "search=mcts", "search.simulations=0"],
     "search.simulations=0: must be an integer >= 1"),
    (SEARCH + ["policy.max_step_tokens=0"], "policy.max_step_tokens=0: must be an integer >= 1"),
    (SEARCH + ["search_run.batch_size=0"], "search_run.batch_size=0: must be an integer >= 1"),
    (SEARCH + ["search_run.batch_size=-2"], "search_run.batch_size=-2: must be an integer >= 1"),
    (SEARCH + ["search_run.batch_size=abc"], "search_run.batch_size=abc: must be an integer >= 1"),
    (SEARCH + ["search_run.limit=-1"], "search_run.limit=-1: must be null or an integer >= 1"),
    (SEARCH + ["search_run.max_steps=0"], "search_run.max_steps=0: must be an integer >= 1"),
    (SEARCH + ["search_run.max_steps=-1"], "search_run.max_steps=-1: must be an integer >= 1"),
    (SEARCH + ["runtime.num_threads=-1"], "runtime.num_threads=-1: must be an integer >= 0"),
    (SEARCH + ["policy.kv_budget_mb=-1"], "policy.kv_budget_mb=-1.0: must be a number > 0"),
    (BEAM + ["reward.kv_budget_mb=0"], "reward.kv_budget_mb=0.0: must be a number > 0"),
    # sampling knobs
    (SEARCH + ["policy.sampling.temperature=0"], "policy.sampling.temperature=0.0: must be a number > 0"),
    (SEARCH + ["policy.sampling.temperature=-1"], "policy.sampling.temperature=-1.0: must be a number > 0"),
    (SEARCH + ["policy.sampling.temperature=nan"], "policy.sampling.temperature=nan: must be a number > 0"),
    (SEARCH + ["policy.sampling.top_p=0"], "policy.sampling.top_p=0.0: must be a number in (0, 1]"),
    (SEARCH + ["policy.sampling.top_p=1.5"], "policy.sampling.top_p=1.5: must be a number in (0, 1]"),
    (SEARCH + ["policy.sampling.top_k=-3"], "policy.sampling.top_k=-3: must be an integer >= 0"),
    # names the component does not take, options that do not exist
    (SEARCH + ["+search.bogus=1"], "search.bogus=1: unknown key; keys of search (greedy): name"),
    (BEAM + ["+search.bogus=1"], "search.bogus=1: unknown key; keys of search (beam): name, n, beam_width, choice"),
    (SEARCH + ["+policy.sampling.seeds=1"], "policy.sampling.seeds=1: unknown key; keys of policy.sampling: "
                                            "temperature, top_p, top_k, seed"),
    (SEARCH + ["search.nn=3"], "search.nn=3: unknown key 'nn'; keys of search: name"),
    (["search", "task=arith", "policy=hf", "search=bogus"],
     "lrm search: search=bogus: unknown option of search; options: beam, best_of_n, compute_optimal"),
    (["search", "task=arith", "policy=nope", "search=greedy"], "policy=nope: unknown option of policy; options: hf, tree"),
    (["search", "tsk=arith"], "tsk=arith: 'tsk' is neither a config group nor a key; groups: task, policy"),
    (SEARCH + ["runtime.seed=abc"], "runtime.seed=abc: value 'abc' of type 'str' could not be converted to Integer"),
    (SEARCH + ["runtime.device=gpu"], "runtime.device=gpu: invalid value 'gpu', expected one of [auto, cpu, cuda]"),
    (SEARCH + ["policy.device=gpu"], "policy.device=gpu: must be cpu, cuda or cuda:<index>"),
    (SEARCH + ["search_run.split=dev"], "search_run.split=dev: task arith has no such split; splits: train, test"),
    (SEARCH + ["search_run.aggregation=max"], "search_run.aggregation=max: must be one of min, prod, last, mean"),
    (SEARCH + ["runtime.seed=1,2"], "runtime.seed=1,2: several values sweep only with --multirun (-m)"),
    (SEARCH + ["task.min_steps=5", "task.max_steps=2"], "task.min_steps=5: must be <= task.max_steps (2)"),
    (["annotate", "task=arith", "policy=hf", "annotate=mc_rollout", "annotate.num_rollouts=0"],
     "lrm annotate: annotate.num_rollouts=0: must be an integer >= 1"),
    (["train", "task=arith", "objective=sft", "objective.train.lr=0"],
     "lrm train: objective.train.lr=0.0: must be a number > 0"),
    (["run", "pipeline.sweep_n=[1,0]"], "lrm run: pipeline.sweep_n=[1,0]: must be a non-empty list whose items must be an integer >= 1"),
    (["run", "stage=bogus"], "lrm run: stage=bogus: must be null or one of sft, warmup, annotate, prm, sweep, report"),
]


@pytest.mark.parametrize("args,expected", COMPOSE_CASES, ids=[" ".join(a[-1:]) for a, _ in COMPOSE_CASES])
def test_config_mistakes_end_in_one_line(args, expected, tmp_path):
    assert_one_line(lrm(*args, f"runtime.output_dir={tmp_path / 'out'}"), expected)


# --------------------------------------------------------------------- where things are built


def test_runtime_device_cuda_without_cuda_is_an_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = lrm(*SEARCH, "runtime.device=cuda", f"runtime.output_dir={tmp_path}")
    assert_one_line(r, "lrm search: runtime.device=cuda: CUDA is not available", "use cpu")


def test_policy_device_cuda_without_cuda_is_an_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = lrm(*SEARCH, "policy.device=cuda", f"runtime.output_dir={tmp_path}")
    assert_one_line(r, "policy.device=cuda: CUDA is not available")


def test_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine")
    assert_one_line(lrm(*SEARCH, f"runtime.output_dir={f}"),
                    f"runtime.output_dir={f}: is a file, not a folder")
    assert f.read_text() == "mine"
    assert_one_line(lrm(*SEARCH, f"runtime.output_dir={f}/sub"),
                    f"runtime.output_dir={f}/sub: is not a writable folder (Not a directory)")


def test_output_dir_that_cannot_be_written(tmp_path):
    # /proc refuses new folders whoever we are (permission bits would not stop root)
    assert_one_line(lrm(*SEARCH, "runtime.output_dir=/proc/lrm_out"),
                    "runtime.output_dir=/proc/lrm_out: is not a writable folder")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from lrm_engine.models.loading import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("m") / "tiny", hidden_size=32, num_layers=1,
                           num_heads=2, num_kv_heads=1, intermediate_size=32)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_model_path_that_is_a_file(tiny_model, tmp_path):
    r = lrm(*SEARCH, f"policy.path={tiny_model / 'config.json'}", f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, f"model path `{tiny_model / 'config.json'}` is a file, not a folder")


def test_model_path_that_does_not_exist(tmp_path):
    r = lrm(*SEARCH, f"policy.path={tmp_path / 'nope'}", f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, f"model path `{tmp_path / 'nope'}` does not exist")


def test_garbage_config_json(tiny_model, tmp_path):
    d = _copy(tiny_model, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    r = lrm(*SEARCH, f"policy.path={d}", f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, f"`{d / 'config.json'}` is not valid JSON")


def test_garbage_safetensors(tiny_model, tmp_path):
    d = _copy(tiny_model, tmp_path / "m")
    (d / "model.safetensors").write_bytes(os.urandom(2048))
    r = lrm(*SEARCH, f"policy.path={d}", f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, f"`{d / 'model.safetensors'}` is not a readable safetensors file")


def test_pickle_weights_need_the_opt_in(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    d = _copy(tiny_model, tmp_path / "m")
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    out = tmp_path / "o"
    r = lrm(*SEARCH, f"policy.path={d}", f"runtime.output_dir={out}")
    assert_one_line(r, f"`{d}` holds only pickle weights (pytorch_model.bin)", "policy.allow_pickle=true")
    ok = lrm(*SEARCH, f"policy.path={d}", "policy.allow_pickle=true", "search_run.limit=1",
             "search_run.max_steps=1", "policy.max_step_tokens=2", "runtime.progress=false",
             f"runtime.output_dir={out}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads(ok.stdout.strip().splitlines()[-1])["problems"] == 1


def test_an_empty_split_is_an_error_not_nan(tmp_path):
    d = tmp_path / "gsm8k"
    d.mkdir()
    (d / "test.jsonl").write_text("\n")
    r = lrm("search", "task=gsm8k", f"task.path={d}", "policy=hf", "search=greedy",
            f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, "gsm8k: split 'test' has no usable example in", "test.jsonl")


def test_a_split_file_that_is_missing(tmp_path):
    r = lrm("search", "task=gsm8k", f"task.path={tmp_path / 'none'}", "policy=hf", "search=greedy",
            f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, "gsm8k: data file not found:", "task.path=")


def test_processbench_predictions_that_are_missing(tmp_path):
    r = lrm("evaluate", "task=processbench", f"task.predictions={tmp_path / 'p.jsonl'}",
            f"runtime.output_dir={tmp_path / 'o'}")
    assert_one_line(r, "processbench: predictions file not found")
