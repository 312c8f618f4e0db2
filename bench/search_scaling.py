"""bench/search_scaling.py: accuracy vs total computed tokens for every search, on arith_hard.

    python bench/search_scaling.py [--n 4 16 64] [--problems 100] [--searches ...]
                                   [--policy DIR] [--prm DIR] [--out DIR]

Uses the embedded default models that `lrm run` trains (policy.path=null / reward.path=null
resolve to them; run `lrm run` first) or the given folders. For each search and each compute
level N, the held-out arith_hard problems are searched in batches; accuracy is graded after the
search; tokens = policy + PRM tokens computed per problem (reused prefix tokens are not
counted). How N maps onto each search's knob:

    greedy: once (N = 1)            majority, best_of_n, beam, lookahead, dvts, compute_optimal: n = N
    mcts: simulations = N (k = 4)   tot_bfs: proposals = N // 2 kept 2   tot_dfs: proposals 4, step_limit = MAX_STEPS + N
    sr_mcts: iterations = N // 2

Writes a table (stderr), scaling.png and rows.json into --out, and prints as its last line
{"bench": "search_scaling", "rows": [{"search", "n", "accuracy", "tokens"}, ...]}.
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

ALL = ("greedy", "majority", "best_of_n", "beam", "lookahead", "dvts", "mcts", "tot_bfs",
       "tot_dfs", "compute_optimal", "sr_mcts")
# Depth limit of every search (ctx.max_steps).
MAX_STEPS = 10
NEEDS_PRM = {"best_of_n", "beam", "lookahead", "dvts", "mcts", "tot_bfs", "tot_dfs", "compute_optimal"}


def knobs(search: str, n: int) -> dict:
    return {
        "greedy": {},
        "majority": {"n": n}, "best_of_n": {"n": n}, "beam": {"n": n, "beam_width": min(4, n)},
        "lookahead": {"n": n, "beam_width": min(4, n)}, "dvts": {"n": n, "beam_width": min(4, n)},
        "compute_optimal": {"n": n},
        "mcts": {"simulations": n, "k": 4},
        "tot_bfs": {"proposals": max(2, n // 2), "keep": 2},
        # a straight dive to the depth limit, then N states of backtracking (step_limit = N
        # alone cannot reach a 6-step solution at N = 4)
        "tot_dfs": {"proposals": 4, "step_limit": MAX_STEPS + n},
        "sr_mcts": {"iterations": max(1, n // 2)},
    }[search]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--searches", nargs="+", default=list(ALL))
    ap.add_argument("--policy", default=None)
    ap.add_argument("--prm", default=None)
    ap.add_argument("--pairwise", default=None, help="model for sr_mcts's pairwise judge (default: the PRM's folder)")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LRM_BENCH_THREADS", "2")))
    ap.add_argument("--out", default="outputs/bench_search_scaling")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import lrm_engine
    from lrm_engine.core.engine import SearchContext, run_search
    from lrm_engine.core.results import ResultsFile
    from lrm_engine.default_models import resolve_model_path
    from lrm_engine.models.hf_policy import HFPolicy
    from lrm_engine.models.sampling import SamplingConfig
    from lrm_engine.pipeline import _score_cell
    from lrm_engine.plugin_manager import registries
    from lrm_engine.report import markdown_table, write_report
    from lrm_engine.rewards.factories import make_prm_token

    cfg = lrm_engine.compose(["task=arith_hard"])
    comps = lrm_engine.build(cfg)
    task = comps.task
    regs = registries()
    pol_dir = resolve_model_path(args.policy, "policy", "--policy")
    prm_dir = resolve_model_path(args.prm, "prm", "--prm")
    examples = list(task.examples("test"))[: args.problems]
    by_id = {ex.problem.id: ex for ex in examples}
    problems = [ex.problem for ex in examples]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_start = time.perf_counter()
    for s in args.searches:
        for n in (args.n if s != "greedy" else [1]):
            policy = HFPolicy.from_config(pol_dir, step=task.step, max_step_tokens=24, kv_budget_mb=256)
            reward = None
            if s in NEEDS_PRM:
                reward = make_prm_token(prm_dir, kv_budget_mb=256)
            elif s == "sr_mcts":
                reward = regs["reward"].create("pairwise", path=args.pairwise or pol_dir)
            ctx = SearchContext(policy=policy, reward=reward, step=task.step, prompt=task.prompt,
                                sampling=SamplingConfig(temperature=1.0, seed=0), ops=comps.kernels,
                                aggregation="min", max_steps=MAX_STEPS)
            search = regs["search"].create(s, **knobs(s, n))
            t0 = time.perf_counter()
            try:
                recs = run_search(search, ctx, problems, ResultsFile(out / f"{s}@{n}.jsonl"),
                                  batch_size=args.batch, progress=False)
            except Exception as exc:  # report the failure in the table, keep going
                print(f"{s}@{n}: FAILED {type(exc).__name__}: {exc}", file=sys.stderr)
                rows.append({"search": s, "n": n, "accuracy": None, "tokens": None,
                             "error": f"{type(exc).__name__}: {exc}"})
                continue
            row = _score_cell(s, n, recs, by_id, task)
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(f"{s}@{n}: accuracy {row['accuracy']:.3f} tokens/problem {row['tokens']:.0f} "
                  f"({row['wall_s']} s)", file=sys.stderr, flush=True)
    good = [r for r in rows if r.get("accuracy") is not None]
    write_report(good, out, f"Search scaling on arith_hard ({len(problems)} problems)",
                 columns=("search", "n", "accuracy", "tokens", "policy_tokens", "prm_tokens", "wall_s"))
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    print(markdown_table(good, ("search", "n", "accuracy", "tokens", "wall_s")), file=sys.stderr)
    print(json.dumps({
        "bench": "search_scaling",
        "rows": [{k: r.get(k) for k in ("search", "n", "accuracy", "tokens", "error") if k in r} for r in rows],
        "problems": len(problems), "plot": str(out / "scaling.png"), "wall_s": round(time.perf_counter() - t_start, 1),
        "threads": args.threads, "load_average": load_average(), "machine": machine(), "date": utc_now(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
