"""`lrm run` end to end at toy sizes: every stage, the report files, caching, stage reruns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

TOY = [
    "pipeline.policy_size=micro", "pipeline.sft_steps=6", "pipeline.sft_examples=64",
    "pipeline.annotate_problems=4", "pipeline.annotate_rollouts=2", "pipeline.prm_steps=4",
    "pipeline.prm_warmup_steps=3",
    "pipeline.prm_eval_problems=8", "pipeline.eval_problems=3", "pipeline.sweep_n=[1,2]",
    "pipeline.max_steps=4", "pipeline.max_step_tokens=12", "pipeline.run_name=toy",
]


def lrm(tmp_path, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", LRM_CACHE=str(tmp_path / "cache"))
    return subprocess.run(
        [sys.executable, "-m", "lrm_engine", "run", *TOY, f"runtime.output_dir={tmp_path / 'out'}", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )


@pytest.mark.timeout(900)
def test_lrm_run_toy_pipeline(tmp_path):
    r = lrm(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "out" / "toy"
    for f in ("report.md", "scaling.png", "results.jsonl"):
        assert (run / f).is_file(), f
    assert (run / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    cells = {(x["search"], x["n"]) for x in rows}
    assert cells == {("greedy", 1), ("majority", 1), ("majority", 2), ("pass", 1), ("pass", 2),
                     ("best_of_n", 1), ("best_of_n", 2), ("beam", 1), ("beam", 2)}
    for x in rows:
        assert 0.0 <= x["accuracy"] <= 1.0
        assert x["tokens"] > 0
    # PRM-scored searches pay for PRM tokens, the others don't.
    by = {(x["search"], x["n"]): x for x in rows}
    assert by["best_of_n", 2]["prm_tokens"] > 0 and by["majority", 2]["prm_tokens"] == 0
    assert by["majority", 2]["policy_tokens"] > by["majority", 1]["policy_tokens"]
    report = (run / "report.md").read_text()
    assert "| search | n | accuracy |" in report
    # The PRM line carries the step-position baseline the PRM has to beat.
    assert re.search(r"step position alone: 0\.\d+", report), report
    # ... and the PRM's own skill as a policy, next to what it buys as a verifier.
    assert re.search(r"PRM's model used as the policy \(greedy\): \d+\.\d%", report), report
    prm_done = json.loads(next(run.glob("prm-*/done.json")).read_text())
    assert 0.0 <= prm_done["greedy_as_policy"] <= 1.0
    warm = json.loads(next(run.glob("warmup-*/done.json")).read_text())
    assert warm["steps"] == 3 and warm["model_dir"].endswith("model")
    ann = json.loads(next(run.glob("annotate-*/done.json")).read_text())
    assert ann["completer"] == "warmup" and ann["completer_tokens"]["policy_tokens_computed"] > 0
    prm_cfg = json.loads((run.glob("prm-*/model/prm_config.json").__next__()).read_text())
    assert prm_cfg["readout"] == "likelihood"
    # The embedded defaults are installed for policy.path=null / reward.path=null.
    assert (tmp_path / "cache" / "default" / "policy" / "config.json").is_file()
    assert (tmp_path / "cache" / "default" / "prm" / "config.json").is_file()
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out["accuracy"]) >= {"greedy", "beam@2", "pass@2"}

    # Second run: every stage cached.
    r2 = lrm(tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    for stage in ("sft", "warmup", "annotate", "prm", "sweep", "report"):
        assert f"[lrm run] {stage}: cached" in r2.stderr

    # stage=sweep reruns that stage and the report that reads it; the stages before stay cached.
    r3 = lrm(tmp_path, "stage=sweep")
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "[lrm run] sweep: running" in r3.stderr
    assert "[lrm run] report: running" in r3.stderr  # it reads the rerun sweep
    assert "[lrm run] sft: cached" in r3.stderr and "[lrm run] prm: cached" in r3.stderr


def test_unknown_stage_is_a_clear_error(tmp_path):
    r = lrm(tmp_path, "stage=bogus")
    assert r.returncode != 0
    assert "stage='bogus' is not a stage" in r.stderr and "sweep" in r.stderr and "warmup" in r.stderr
    assert "Traceback" not in r.stderr
    r = lrm(tmp_path, "pipeline.prm_readout=logits")
    assert r.returncode != 0 and "pipeline.prm_readout='logits' is not one of tag, likelihood" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("done.json"))  # refused before any stage ran
