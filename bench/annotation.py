"""bench/annotation.py: quality and cost of process annotation on arith (exact step truth).

    python bench/annotation.py [--problems 64] [--rollouts 4] [--policy DIR] [--judge DIR]

Runs the annotators `mc_rollout`, `omegaprm` and `judge` with the embedded default policy (the
one `lrm run` trains; or --policy) on arith_hard train problems, and compares every labelled
step with the task's exact prefix labels (step i is good iff steps 0..i are all correct):

- accuracy: hard label (soft > 0.5 for the judge) == truth, over labelled steps;
- auroc: soft label vs truth (None when only one class is present);
- tokens_per_step: policy (and judge) tokens computed / labelled steps.

The judge is a prompted model (--judge, default: the policy itself, a weak judge: its verdicts
are mostly unparseable and scored neutral — reported as such). Last stdout line:
{"bench": "annotation", "rows": [{"annotator", "auroc", "accuracy", "tokens_per_step", ...}]}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, utc_now  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--judge", default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LRM_BENCH_THREADS", "2")))
    ap.add_argument("--annotators", nargs="+", default=["mc_rollout", "omegaprm", "judge"])
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import lrm_engine
    from lrm_engine.core.engine import SearchContext
    from lrm_engine.default_models import resolve_model_path
    from lrm_engine.metrics import auroc
    from lrm_engine.models.hf_policy import HFPolicy
    from lrm_engine.models.sampling import SamplingConfig
    from lrm_engine.plugin_manager import registries

    cfg = lrm_engine.compose(["task=arith_hard"])
    comps = lrm_engine.build(cfg)
    task = comps.task
    regs = registries()
    pol_dir = resolve_model_path(args.policy, "policy", "--policy")
    examples = list(task.examples("train"))[-args.problems:]  # the end of train: unseen by SFT
    knobs = {
        "mc_rollout": {"num_rollouts": args.rollouts},
        "omegaprm": {"num_rollouts": args.rollouts},
        "judge": {"path": args.judge or pol_dir},
    }
    rows = []
    for name in args.annotators:
        policy = HFPolicy.from_config(pol_dir, step=task.step, max_step_tokens=24, kv_budget_mb=256)
        ctx = SearchContext(policy=policy, step=task.step, prompt=task.prompt, ops=comps.kernels,
                            sampling=SamplingConfig(temperature=1.0, seed=0), max_steps=10)
        ann = regs["annotator"].create(name, **knobs.get(name, {}))
        t0 = time.perf_counter()
        recs = []  # (problem id, record)
        for i in range(0, len(examples), args.batch):
            for item in ann.annotate_batch(ctx, examples[i: i + args.batch], task.grade):
                if isinstance(item, tuple):  # grouped annotators: (problem id, records, status)
                    recs += [(item[0], r) for r in item[1]]
                else:
                    recs.append((item["id"], item))
        wall = time.perf_counter() - t0
        by_id = {ex.problem.id: ex for ex in examples}
        soft, hard, truth = [], [], []
        for pid, r in recs:
            ex = by_id.get(pid)
            steps = list(r.get("completions") or [])
            if ex is None or not steps:
                continue
            true = task.prefix_labels(ex, steps)
            s = r.get("soft_labels") or [float(x) for x in r["labels"]]
            for sv, t in zip(s, true):
                soft.append(float(sv))
                hard.append(float(sv) > 0.5)
                truth.append(bool(t))
        pol_tokens = ctx.counters().get("policy_tokens_computed", 0)
        judge_tokens = int(getattr(ann, "stats", {}).get("judge_tokens", 0)) if hasattr(ann, "stats") else 0
        n = len(truth)
        au = auroc(soft, truth) if n else float("nan")
        rows.append({
            "annotator": name,
            "auroc": None if au != au else round(au, 4),
            "accuracy": round(sum(h == t for h, t in zip(hard, truth)) / n, 4) if n else None,
            "tokens_per_step": round((pol_tokens + judge_tokens) / n, 1) if n else None,
            "labelled_steps": n, "good_share": round(sum(truth) / n, 3) if n else None,
            "records": len(recs), "wall_s": round(wall, 1),
            "stats": {k: v for k, v in dict(getattr(ann, "stats", {}) or {}).items()
                      if isinstance(v, (int, float))},
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"bench": "annotation", "rows": rows, "problems": len(examples),
                      "rollouts": args.rollouts, "threads": args.threads,
                      "load_average": load_average(), "machine": machine(), "date": utc_now()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
