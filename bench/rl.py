"""RL on the embedded default: greedy accuracy on the arith_hard test split before / after each
RL objective, starting from the SFT policy of `lrm run`.

    python bench/rl.py                                   # grpo, ppo, vineppo, rest_mcts at defaults
    python bench/rl.py --objectives grpo --problems 100
    python bench/rl.py --objectives grpo --set objective.train.total_steps=20   # reduced size
    python bench/rl.py --policy /path/to/sft/model --prm /path/to/prm/model
    python bench/rl.py --objectives grpo,tree_grpo --set objective.train.total_steps=40

Each objective runs as `lrm train objective=<name> task=arith_hard` (its conf/objective defaults,
plus --set overrides) in a fresh output folder, one thread; greedy accuracy is the tree engine's
greedy search (the figure `lrm run` reports) on the first --problems test problems. The last line
printed is ``{"bench": "rl", "rows": [{"objective", "greedy_before", "greedy_after", "wall_s", ...}]}``.

Sampling cost (rows of grpo and tree_grpo): ``leaves`` (completions trained on over the run) and
``tokens_per_leaf`` — for tree_grpo the policy's measured ``tokens_computed`` per leaf (each
shared prompt and step computed once), next to ``iid_tokens_per_leaf``, what sampling the same
leaves independently computes (each leaf's prompt + path); for grpo, prompt + completion per
sampled completion (HF generate's padding not counted, so a lower bound of its cost).
The exit status is nonzero when every row failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(name: str, out: Path, problems: int, extra: list[str], env: dict) -> dict:
    args = [sys.executable, "-m", "lrm_engine", "train", f"objective={name}", "task=arith_hard",
            f"runtime.output_dir={out}", "runtime.num_threads=1", "runtime.progress=false"]
    if name == "rest_mcts":
        args.append(f"objective.eval_problems={problems}")
    else:
        args.append(f"objective.eval.num_problems={problems}")
    args += extra
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        return {"objective": name, "error": r.stderr.strip().splitlines()[-1] if r.stderr else "failed",
                "wall_s": round(wall, 1)}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if name == "rest_mcts":
        before, after = res["greedy_before"], res["greedy_after"]
        detail = {"iterations": [{k: v for k, v in it.items() if k != "wall_s"} for it in res["iterations"]]}
    else:
        before, after = res["eval"]["before"]["accuracy"], res["eval"]["after"]["accuracy"]
        detail = {"steps": res["steps"], "final_reward": res.get("reward"),
                  "final_accuracy": res.get("accuracy"), "final_kl": res.get("kl")}
        detail.update(sampling_cost(res.get("run_dir")))
    return {"objective": name, "greedy_before": before, "greedy_after": after,
            "gain": round(after - before, 4), "wall_s": round(wall, 1), **detail}


def sampling_cost(run_dir) -> dict:
    """Leaves and tokens per leaf of a rollout run, from its result.json / last checkpoint."""
    if not run_dir:
        return {}
    rd = Path(run_dir)
    tot = {}
    rf = rd / "result.json"
    if rf.is_file():
        tot = json.loads(rf.read_text()).get("metrics", {}).get("rollout_totals") or {}
    if not tot:  # grpo's GroupRolloutSource keeps its totals in the checkpoint's data state
        cks = sorted((rd / "checkpoints").glob("step_*/trainer_state.json"),
                     key=lambda p: int(p.parent.name.split("_")[1]))
        if cks:
            data = json.loads(cks[-1].read_text()).get("data") or {}
            data = data.get("source", data)
            t = data.get("totals") or {}
            if t.get("leaves"):
                tot = {"leaves": t["leaves"], "iid_tokens_per_leaf": t["iid_tokens"] / t["leaves"]}
    out = {}
    if tot.get("leaves"):
        out["leaves"] = int(tot["leaves"])
        out["tokens_per_leaf"] = round(float(tot.get("tokens_per_leaf", tot["iid_tokens_per_leaf"])), 2)
        out["iid_tokens_per_leaf"] = round(float(tot["iid_tokens_per_leaf"]), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objectives", default="grpo,ppo,vineppo,rest_mcts")
    ap.add_argument("--problems", type=int, default=100, help="arith_hard test problems")
    ap.add_argument("--policy", default=None, help="SFT policy folder (default: the embedded default)")
    ap.add_argument("--prm", default=None, help="PRM folder for rest_mcts (default: the embedded default)")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every objective (repeatable); NAME:KEY=VALUE for one")
    a = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if a.policy:
        env["LRM_DEFAULT_POLICY"] = str(Path(a.policy).resolve())
    if a.prm:
        env["LRM_DEFAULT_PRM"] = str(Path(a.prm).resolve())
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench_rl_"))
    rows = []
    for name in [o for o in a.objectives.split(",") if o]:
        extra = []
        for s in a.set:
            head, _, rest = s.partition(":")
            if rest and "=" not in head:
                if head == name:
                    extra.append(rest)
            else:
                extra.append(s)
        row = run_one(name, out, a.problems, extra, env)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    print(json.dumps({"bench": "rl", "problems": a.problems, "rows": rows}))
    if rows and all("error" in r for r in rows):
        sys.exit(1)  # nothing ran: a missing module, a bad override, ...


if __name__ == "__main__":
    main()
