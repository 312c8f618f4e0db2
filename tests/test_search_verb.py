"""`lrm search` end to end on tiny random models saved to disk: files, record fields, grading,
compute counters, resumability; and the verb without a reward model (Python embedding)."""

from __future__ import annotations

import json

import pytest
import torch

from lrm_engine.models import save_tiny_llama


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_verb")
    pol = save_tiny_llama(root / "policy", hidden_size=32, initializer_range=0.2)
    prm = save_tiny_llama(root / "prm", seed=1, hidden_size=32, initializer_range=0.2)
    return pol, prm


def _args(models, out, *extra):
    pol, prm = models
    return ["search", "task=arith", "task.num_test=20", "task.num_train=20", "policy=hf",
            f"policy.path={pol}", "policy.max_step_tokens=6", "reward=prm_token",
            f"reward.path={prm}", "search=beam", "search.n=4", "search.beam_width=2",
            "search_run.limit=4", "search_run.max_steps=3", "search_run.batch_size=2",
            f"runtime.output_dir={out}", "runtime.progress=false", "runtime.num_threads=1",
            "kernels=reference", *extra]


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_search_verb_writes_graded_results_and_resumes(models, tmp_path):
    from conftest import run_lrm

    out = tmp_path / "run"
    r = run_lrm(*_args(models, out), env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "lrm search:" in r.stdout and "accuracy" in r.stdout
    last = json.loads(r.stdout.strip().splitlines()[-1])
    recs = _records(out)
    assert len(recs) == 4 and len({x["id"] for x in recs}) == 4
    for rec in recs:
        assert {"id", "answer", "solution", "score", "steps", "candidates", "counters", "correct",
                "reference"} <= set(rec)
        assert isinstance(rec["correct"], bool)
        c = rec["counters"]
        assert c["policy_tokens_computed"] > 0 and c["reward_tokens_computed"] > 0
        assert "policy_tokens_reused" in c and "reward_tokens_reused" in c
    summary = json.loads((out / "summary.json").read_text())
    assert summary == last
    assert summary["problems"] == 4 and 0.0 <= summary["accuracy"] <= 1.0
    assert summary["tokens_computed"] == summary["policy_tokens_computed"] + summary["reward_tokens_computed"]
    assert summary["reward_tokens_computed"] > 0 and summary["tokens_reused"] > 0
    assert summary["resumed"] == 0

    # Interrupted run: drop the last record (and tear the line before it), rerun: only the
    # missing problems are searched, nothing written twice.
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    r = run_lrm(*_args(models, out), env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    recs2 = _records(out)
    assert len(recs2) == 4 and {x["id"] for x in recs2} == {x["id"] for x in recs}
    assert recs2[:2] == recs[:2]
    summary2 = json.loads((out / "summary.json").read_text())
    assert summary2["resumed"] == 2 and summary2["problems"] == 4


def test_search_verb_without_reward_in_python(models, tmp_path):
    from lrm_engine import build, compose
    from lrm_engine.verbs import search as verb

    torch.set_num_threads(1)
    pol, _ = models
    out = tmp_path / "greedy"
    cfg = compose(["task=arith", "task.num_test=20", "task.num_train=20", "policy=hf",
                   f"policy.path={pol}", "policy.max_step_tokens=6", "search=greedy",
                   "search_run.limit=3", "search_run.max_steps=2", f"runtime.output_dir={out}",
                   "runtime.progress=false", "kernels=reference"])
    comps = build(cfg)
    assert verb.unavailable(cfg, comps) is None
    summary = verb.main(cfg, comps)
    assert summary["problems"] == 3 and summary["reward_tokens_computed"] == 0
    assert summary["policy_tokens_computed"] > 0
    assert all("correct" in r for r in _records(out))
