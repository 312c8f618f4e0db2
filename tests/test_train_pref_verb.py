"""`lrm train objective=<dpo|odpo|step_dpo>` from a preference JSONL file (tiny settings)."""

import json
from pathlib import Path

from conftest import run_lrm

TINY = ["task=arith", "runtime.num_threads=1", "runtime.progress=false",
        "objective.model.size=micro", "objective.train.total_steps=3",
        "objective.train.micro_batch_size=4", "objective.train.warmup_steps=0",
        "objective.train.save_every=3", "objective.train.tensorboard=false"]


def _result(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_dpo_and_odpo_train_from_a_jsonl_file(tmp_path):
    rows = [{"prompt": f"{a}+{b}=\n", "chosen": f"{a}+{b}={a + b}\nAnswer: {a + b}",
             "rejected": f"{a}+{b}={a + b + 1}\nAnswer: {a + b + 1}",
             "score_chosen": 1.0, "score_rejected": 0.0 if a else 1.0}
            for a in range(3) for b in range(3)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    res = _result(run_lrm("train", "objective=dpo", f"objective.data='{data}'",
                          f"runtime.output_dir={tmp_path}", *TINY, timeout=120))
    assert res["steps"] == 3 and Path(res["model_dir"], "model.safetensors").is_file()
    assert res["data"]["records"] == 9 and res["data"]["skipped"] == 1
    assert Path(res["run_dir"]).name.startswith("dpo-arith-pairs-")
    # odpo: the three pairs with score_chosen == score_rejected are refused (file:line)
    r = run_lrm("train", "objective=odpo", f"objective.data='{data}'",
                f"runtime.output_dir={tmp_path}", *TINY, timeout=120)
    res = _result(r)
    assert res["data"]["records"] == 6 and res["data"]["skipped"] == 4
    assert f"{data}:1: score_chosen (r_w=1.0) must exceed score_rejected" in r.stderr
