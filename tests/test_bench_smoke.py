"""The benchmarks' baselines compute what they claim: each script at tiny, odd sizes.

Every bench compares lrm_engine against a baseline; a baseline that computed something else would
make its ratio meaningless. These runs check the agreement figures each script reports (the torch
cascade equals per-branch SDPA, the 2-row slice equals the fused kernel and the full softmax, the
fair HF generate loop reaches the same greedy candidates as ours, the lean Python MCTS tree equals
the batched one) and that the sweeps report every size asked for. Speed is not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str, timeout: int = 300) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{script} exited {p.returncode}:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def _have_cpp() -> bool:
    try:
        from lrm_engine.ops import tree_attention

        return tree_attention.cpp_available()
    except Exception:
        return False


needs_cpp = pytest.mark.skipif(not _have_cpp(), reason="lrm_engine._C not built")


@needs_cpp
def test_tree_attention_cascade_baseline_agrees_and_sweeps():
    r = run_bench("tree_attention.py", "--branches", "3", "--prefix", "37", "--new", "5", "--hq", "6",
                  "--hkv", "2", "--dim", "16", "--repeats", "1", "--sweep", "2x19,3x37")
    assert r["agreement"]["max_abs_diff_cascade_vs_sdpa"] < 1e-5, r["agreement"]
    assert r["agreement"]["max_abs_diff_vs_sdpa"] < 1e-5, r["agreement"]
    assert [(p["branches"], p["prefix_tokens"]) for p in r["sweep"]] == [(2, 19), (3, 37)]
    for p in r["sweep"]:
        assert p["agreement"]["max_abs_diff_cascade_vs_sdpa"] < 1e-5, p
        assert p["ratios"]["speedup_vs_torch_cascade"] > 0
    d = r["decode_q_len_1"]
    assert d["max_abs_diff_cascade_vs_sdpa"] < 1e-5 and d["max_abs_diff_vs_sdpa"] < 1e-5, d


@needs_cpp
def test_prm_head_two_row_baseline_agrees_and_sweeps():
    r = run_bench("prm_head.py", "--T", "301", "--V", "997", "--d", "24", "--positions", "37",
                  "--sweep-positions", "5,37,101", "--repeats", "2", "--baseline-repeats", "1")
    assert r["max_abs_diff"] < 1e-5 and r["max_abs_diff_vs_two_row"] < 1e-5, r
    assert [p["positions"] for p in r["sweep"]] == [5, 37, 101]
    assert r["ratios"]["memory_vs_two_row"] > 1  # the slice still gathers [P, d] hidden rows


def test_expand_fair_hf_baseline_reaches_the_same_greedy_candidates():
    r = run_bench("expand.py", "--prompts", "3", "--sweep-prompts", "2", "--depth", "2", "--beams", "2",
                  "--children", "2", "--max-step-tokens", "5", "--check-prompts", "3", timeout=600)
    assert r["outputs"]["problems"] == 3
    assert r["outputs"]["hf_fair_equal"] == 3, r["outputs"]
    assert r["outputs"]["naive_equal"] == 3, r["outputs"]
    assert [p["prompts"] for p in r["sweep"]] == [2, 3]
    t = r["tokens"]
    # one prefill per beam: the fair loop computes fewer policy tokens than re-prefilling k copies
    assert t["hf_fair_policy"] < t["naive_policy"], t


@needs_cpp
def test_tree_ops_lean_python_tree_is_the_headline_and_b_is_swept():
    r = run_bench("tree_ops.py", "--batch", "3,7", "--repeats", "5", "--no-mctx")
    assert r["workload"]["batch_trees_swept"] == [3, 7]
    assert [p["batch_trees"] for p in r["sweep"]] == [3, 7]
    for p in r["sweep"]:
        b = p["batch_trees"]
        assert p["agreement"]["python_tree_equal_trees"] == f"{b}/{b}", p["agreement"]
        assert p["agreement"]["cpp_equals_reference"] is True
    m = r["median_s"]
    assert r["ratios"]["speedup_vs_python_tree"] == pytest.approx(m["python_tree"] / m["cpp"])
    assert r["ratios"]["speedup_vs_python_tree_openr"] == pytest.approx(m["python_tree_openr"] / m["cpp"])
