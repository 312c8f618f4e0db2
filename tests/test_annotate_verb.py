"""`lrm annotate annotate=mc_rollout` end to end on a tiny random policy saved to disk."""

from __future__ import annotations

import json

from lrm_engine.models import save_tiny_llama


def _args(pol, out, limit: int) -> list[str]:
    """`lrm annotate` with mc_rollout (3 rollouts) on the first `limit` train problems."""
    return ["annotate", "task=arith", "task.num_train=30", "policy=hf", f"policy.path={pol}",
            "policy.max_step_tokens=5", "annotate=mc_rollout", "annotate.num_rollouts=3",
            "search_run.split=train", f"search_run.limit={limit}", "search_run.max_steps=3",
            "search_run.batch_size=2", f"runtime.output_dir={out}", "runtime.progress=false",
            "kernels=reference"]


def test_annotate_verb_writes_a_valid_trl_prm_dataset_and_resumes(tmp_path):
    from conftest import run_lrm

    from lrm_engine.train import load_prm_jsonl

    pol = save_tiny_llama(tmp_path / "policy", hidden_size=32, initializer_range=0.2)
    out = tmp_path / "ann"
    args = _args(pol, out, limit=3)
    r = run_lrm(*args, "search_run.limit=2", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_lrm(*args, env={"OMP_NUM_THREADS": "1"}, timeout=300)  # resumes: only the third
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    lines = (out / "prm.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len({json.loads(x)["id"] for x in lines}) == 3
    loaded = load_prm_jsonl(out / "prm.jsonl")
    assert loaded.skipped == 0 and len(loaded.records) == 3
    for line in lines:
        rec = json.loads(line)
        assert len(rec["completions"]) == len(rec["labels"]) == len(rec["soft_labels"]) >= 1
        assert all(0.0 <= s <= 1.0 for s in rec["soft_labels"])
        assert rec["labels"] == [s > 0 for s in rec["soft_labels"]]
    assert summary["records"] == 3 and summary["policy_tokens"]["policy_tokens_computed"] > 0


def test_annotate_verb_with_a_separate_completer(tmp_path):
    """annotate.completer=<model folder>: the completions come from that model; a missing folder
    is one clear error."""
    from conftest import run_lrm

    from lrm_engine.train import load_prm_jsonl

    pol = save_tiny_llama(tmp_path / "policy", hidden_size=32, initializer_range=0.2)
    comp = save_tiny_llama(tmp_path / "completer", seed=5, hidden_size=32, initializer_range=0.2)
    out = tmp_path / "ann"
    args = _args(pol, out, limit=2)
    r = run_lrm(*args, f"annotate.completer={comp}", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = load_prm_jsonl(out / "prm.jsonl")
    assert loaded.skipped == 0 and len(loaded.records) == 2
    for rec in loaded.records:
        # soft labels are k/3: three completions per prefix, the solution's own answer not counted
        assert all(abs(3 * s - round(3 * s)) < 1e-9 for s in rec.meta["soft_labels"][:-1])
    bad = run_lrm(*args, f"annotate.completer={tmp_path / 'nope'}", f"runtime.output_dir={tmp_path / 'x'}",
                  env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert bad.returncode != 0 and "is not a model folder" in bad.stderr and "Traceback" not in bad.stderr
