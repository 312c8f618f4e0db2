"""bench/voting.py: why self-consistency (majority) does or does not beat greedy, measured.

    python bench/voting.py [--n 16] [--problems 100] [--temperatures 0.3 0.5 0.7 1.0]
                           [--top-p 1.0 0.9] [--max-step-tokens 24] [--policy DIR] [--out DIR]

On the held-out arith_hard problems, with the embedded default policy (`lrm run` trains it) or
the given folder, it samples N solutions per problem at every (temperature, top_p) and reports,
per setting, what decides a vote:

  sample_accuracy   the mean accuracy of one sampled solution (what each voter knows)
  majority          accuracy of the most frequent final answer (ties: the first sampled)
  pass_at_n         a correct solution among the N
  no_answer         the fraction of samples without a final answer (they cannot vote)
  modal_share       the mean share of the N votes that the winning answer gets
  correct_outvoted  problems where a correct answer was sampled but another answer won
  greedy_right_vote_wrong / greedy_wrong_vote_right   against greedy on the same problems

Self-consistency helps when a correct sample is more likely than any single wrong answer
(errors spread over many wrong answers, Wang et al. 2023); when the policy's samples are mostly
wrong (sample accuracy well under greedy's), the vote follows the sampled majority down.

Last stdout line: {"bench": "voting", "greedy": ..., "rows": [{"temperature", "top_p", ...}], ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, utc_now  # noqa: E402

MAX_STEPS = 10


def vote(answers: list) -> tuple:
    """(winning answer, its share of the N votes); None answers do not vote; ties: first sampled."""
    votes = [a for a in answers if a is not None]
    if not votes:
        return None, 0.0
    counts = Counter(votes)
    best = max(counts.values())
    winner = next(a for a in votes if counts[a] == best)
    return winner, best / len(answers)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    ap.add_argument("--top-p", type=float, nargs="+", default=[1.0, 0.9])
    ap.add_argument("--max-step-tokens", type=int, default=24)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LRM_BENCH_THREADS", "1")))
    ap.add_argument("--out", default="outputs/bench_voting")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import lrm_engine
    from lrm_engine.core.engine import SearchContext, run_search
    from lrm_engine.core.results import ResultsFile
    from lrm_engine.default_models import resolve_model_path
    from lrm_engine.models.sampling import SamplingConfig
    from lrm_engine.models.tree_policy import TreePolicy
    from lrm_engine.plugin_manager import registries

    cfg = lrm_engine.compose(["task=arith_hard"])
    comps = lrm_engine.build(cfg)
    task = comps.task
    regs = registries()
    pol_dir = resolve_model_path(args.policy, "policy", "--policy")
    examples = list(task.examples("test"))[: args.problems]
    by_id = {ex.problem.id: ex for ex in examples}
    problems = [ex.problem for ex in examples]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def search(name: str, sampling, tag: str, **knobs) -> list[dict]:
        policy = TreePolicy.from_config(pol_dir, step=task.step, max_step_tokens=args.max_step_tokens,
                                        kv_budget_mb=512)
        ctx = SearchContext(policy=policy, reward=None, step=task.step, prompt=task.prompt, sampling=sampling,
                            ops=comps.kernels, max_steps=MAX_STEPS)
        return run_search(regs["search"].create(name, **knobs), ctx, problems,
                          ResultsFile(out / f"{tag}.jsonl"), batch_size=args.batch, progress=False)

    greedy = search("greedy", SamplingConfig(greedy=True), "greedy")
    greedy_right = {r["id"]: bool(task.grade(by_id[r["id"]], r["solution"])) for r in greedy}
    g_acc = sum(greedy_right.values()) / len(greedy)
    print(f"greedy: {g_acc:.3f}", file=sys.stderr, flush=True)
    rows = []
    for temp in args.temperatures:
        for top_p in args.top_p:
            t0 = time.perf_counter()
            recs = search("majority", SamplingConfig(temperature=temp, top_p=top_p, seed=0),
                          f"majority_n{args.n}_t{temp}_p{top_p}", n=args.n)
            n_s = right_s = no_ans = maj = hit = outvoted = gr_vw = gw_vr = 0
            shares = []
            for r in recs:
                ex = by_id[r["id"]]
                answers = [c.get("answer") for c in r["candidates"]]
                right = [bool(task.grade(ex, c["text"])) for c in r["candidates"]]
                n_s += len(right)
                right_s += sum(right)
                no_ans += sum(a is None for a in answers)
                winner, share = vote(answers)
                shares.append(share)
                w_right = winner is not None and any(ok for a, ok in zip(answers, right) if a == winner)
                maj += w_right
                hit += any(right)
                outvoted += any(right) and not w_right
                gr_vw += greedy_right[r["id"]] and not w_right
                gw_vr += (not greedy_right[r["id"]]) and w_right
            m = len(recs)
            row = {"temperature": temp, "top_p": top_p, "n": args.n, "problems": m,
                   "sample_accuracy": right_s / max(n_s, 1), "majority": maj / m, "pass_at_n": hit / m,
                   "no_answer": no_ans / max(n_s, 1), "modal_share": sum(shares) / m,
                   "correct_outvoted": outvoted, "greedy_right_vote_wrong": gr_vw,
                   "greedy_wrong_vote_right": gw_vr, "wall_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(f"T={temp} top_p={top_p}: " + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                if k not in ("temperature", "top_p", "n", "problems")), file=sys.stderr, flush=True)
    best = max(rows, key=lambda r: (r["majority"], -r["temperature"]))
    (out / "rows.json").write_text(json.dumps({"greedy": g_acc, "rows": rows}, indent=1))
    print(json.dumps({
        "bench": "voting", "greedy": g_acc, "rows": rows,
        "best": {k: best[k] for k in ("temperature", "top_p", "majority")},
        "problems": len(problems), "max_step_tokens": args.max_step_tokens,
        "wall_s": round(time.perf_counter() - t_start, 1), "threads": args.threads,
        "load_average": load_average(), "machine": machine(), "date": utc_now(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
