"""`lrm train`: SFT and PRM runs end to end through the CLI (tiny sizes), resume, bad data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run_lrm

TINY = ["runtime.num_threads=1", "runtime.progress=false", "task.num_train=200", "task.num_test=40",
        "objective.model.size=micro", "objective.train.total_steps=6",
        "objective.train.micro_batch_size=8", "objective.train.warmup_steps=1",
        "objective.train.save_every=3"]


def _result(r) -> dict:
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_train_sft_writes_checkpoints_and_model_and_resumes(tmp_path):
    args = ["train", "objective=sft", "task=arith", f"runtime.output_dir={tmp_path}",
            "objective.num_examples=64", *TINY]
    res = _result(run_lrm(*args, timeout=120))
    run = Path(res["run_dir"])
    assert run.parent == tmp_path / "train" and run.name.startswith("sft-arith-")
    assert res["steps"] == 6 and res["resumed_from"] == 0
    assert (run / "checkpoints" / "step_6" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "step_3" / "trainer_state.json").is_file()
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "tokenizer.json").is_file()
    assert any((run / "tb").iterdir())
    assert math.isfinite(res["final_loss"])
    # the same command finds the finished run (stable folder) and does not train again
    again = _result(run_lrm(*args, timeout=120))
    assert again["run_dir"] == res["run_dir"] and again["resumed_from"] == 6 and again["steps"] == 6


def test_train_prm_oracle_reports_held_out_auroc(tmp_path):
    res = _result(run_lrm("train", "objective=prm", "task=arith", "objective.data=oracle",
                          f"runtime.output_dir={tmp_path}", "objective.num_records=64",
                          "objective.eval.num_problems=30", *TINY, timeout=120))
    run = Path(res["run_dir"])
    assert run.name.startswith("prm-arith-oracle-")
    ev = json.loads((run / "eval.json").read_text())
    assert isinstance(ev["step_auroc"], float) and 0.0 <= ev["step_auroc"] <= 1.0
    assert ev["num_solutions"] == 30 and 0 < ev["num_good_steps"] < ev["num_steps"]
    assert res["step_auroc"] == ev["step_auroc"]
    cfg = json.loads((run / "model" / "prm_config.json").read_text())
    assert cfg["kind"] == "prm_token" and cfg["good_token"] == "+" and cfg["step_tag"] == "\n"
    # the oracle data is kept as a TRL PRM file
    first = json.loads((run / "prm_data.oracle.jsonl").read_text().splitlines()[0])
    assert set(first) >= {"prompt", "completions", "labels"}


def test_train_prm_from_file_skips_malformed_lines(tmp_path):
    good = {"prompt": "2+3=\n", "completions": ["2+3=5", "Answer: 5"], "labels": [True, True]}
    bad = {"prompt": "2+3=\n", "completions": ["2+3=6", "Answer: 6"], "labels": [False, False]}
    lines = [json.dumps(good if i % 2 else bad) for i in range(12)]
    lines.insert(3, '{"prompt": "x", "completions": ["a"], "labels": [2]}')
    data = tmp_path / "my prm.jsonl"
    data.write_text("\n".join(lines) + "\n")
    r = run_lrm("train", "objective=prm", "task=arith", f"objective.data='{data}'",
                f"runtime.output_dir={tmp_path}", "objective.eval.enabled=false", *TINY, timeout=120)
    res = _result(r)
    assert f"{data}:4" in r.stderr and "1 malformed PRM records skipped" in r.stderr
    assert res["data"]["records"] == 12 and res["data"]["skipped"] == 1
    assert Path(res["run_dir"]).name.startswith("prm-arith-my_prm-")
    assert "step_auroc" not in res
    missing = run_lrm("train", "objective=prm", "task=arith", "objective.data=/no/such.jsonl",
                      f"runtime.output_dir={tmp_path}", *TINY)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_train_without_objective_names_the_options():
    r = run_lrm("train", "task=arith")
    assert r.returncode == 2 and "objective=<option>" in r.stderr and "prm" in r.stderr
    assert "Traceback" not in r.stderr
