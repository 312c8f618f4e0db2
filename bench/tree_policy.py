"""bench/tree_policy.py — the `tree` policy vs the `hf` policy on one 2-level expansion.

Workload: 8 prompts, k=4 children per node, 2 levels (8 -> 32 -> 128 children; the second level
expands every non-terminal child of the first), max_step_tokens 16, sampled (temperature 1, same
seed for both), a tiny random-init Llama (~3M parameters: hidden 256, 4 layers, 4 heads / 2 KV
heads, intermediate 688), fp32, one thread. Both policies share the decode loop and the seeded
sampler, so they build the same tree (checked) and compute / reuse the same token counts; the
difference is the forward pass:

    hf    plain transformers + DynamicCache: each node's prefix assembled into a left-padded cache,
          repeated for its k rows, re-concatenated at every decode step, rows dropped by copying.
    tree  transformers' Llama with the "lrm_tree" attention function and TreeKVCache: distinct
          ancestor segments laid out once per call, one packed forward over the live rows, tree
          attention (backend: --attn-backend, default auto = C++ when built, else reference).

    python bench/tree_policy.py [--repeats 3] [--prompts 8] [--k 4] [--attn-backend auto] [--prompt-times 1]

Last stdout line: {"bench": "tree_policy", ..., "wall_s": {...}, "counters": {...}, "ratios": ...}
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (before torch: pins threads)

THREADS = _common.pin_threads()

import warnings  # noqa: E402

import torch  # noqa: E402

warnings.simplefilter("ignore", RuntimeWarning)


def make_prompts(n):
    import random

    rng = random.Random(0)
    return [f"(({rng.randint(10, 999)}+{rng.randint(2, 99)})*{rng.randint(1, 99)})-{rng.randint(1, 50)}=\n"
            for _ in range(n)]


def run(pol, prompts, k, levels):
    from lrm_engine.core.tree import BatchedTree
    from lrm_engine.models import SamplingConfig

    tree = BatchedTree.empty(len(prompts), 1 + k + k * k + 8, k)
    pol.init_roots(tree, prompts)
    frontier = [(b, 0) for b in range(len(prompts))]
    out = []
    for lvl in range(levels):
        res = pol.expand(tree, frontier, k, SamplingConfig(temperature=1.0, seed=lvl))
        out.append([[x.tolist() for x in row] for row in res.tokens])
        frontier = [(b, int(c)) for (b, _), row, fin in zip(res.nodes.tolist(), res.children, res.finished)
                    for c, f in zip(row.tolist(), fin.tolist()) if not f]
    pol.release(tree)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--max-step-tokens", type=int, default=16)
    ap.add_argument("--attn-backend", default="auto")
    ap.add_argument("--prompt-times", type=int, default=1, help="repeat each prompt this many times (longer prefixes)")
    args = ap.parse_args()

    from lrm_engine.models.hf_policy import HFPolicy
    from lrm_engine.models.loading import char_tokenizer, tiny_llama
    from lrm_engine.models.tree_policy import TreePolicy
    from lrm_engine.ops import tree_attention as ta

    tok = char_tokenizer()
    model = tiny_llama(len(tok), hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                       intermediate_size=688)
    params = sum(p.numel() for p in model.parameters())
    prompts = [p * args.prompt_times for p in make_prompts(args.prompts)]
    pols = {
        "hf": lambda: HFPolicy(model, tok, kv_budget_mb=256, max_step_tokens=args.max_step_tokens),
        "tree": lambda: TreePolicy(model, tok, kv_budget_mb=256, max_step_tokens=args.max_step_tokens,
                                   attn_backend=args.attn_backend),
    }
    results, counters = {}, {}

    def case(name):
        def fn():
            pol = pols[name]()
            results[name] = run(pol, prompts, args.k, args.levels)
            counters[name] = pol.counters.as_dict()
        return fn, None

    timing = _common.time_interleaved({n: case(n) for n in pols}, repeats=args.repeats, warmup=1)
    same = results["hf"] == results["tree"]
    backend = args.attn_backend
    if backend == "auto":
        backend = "cpp" if ta.cpp_available() else "reference"
    rec = {
        "bench": "tree_policy",
        "when": _common.utc_now(),
        "workload": {"prompts": args.prompts, "k": args.k, "levels": args.levels,
                     "max_step_tokens": args.max_step_tokens, "params": params,
                     "prompt_tokens_mean": sum(len(tok(p)["input_ids"]) for p in prompts) / len(prompts), "dtype": "float32"},
        "attn_backend": backend,
        "threads": THREADS,
        "machine": _common.machine(),
        "load_average": _common.load_average(),
        "same_tokens": same,
        "wall_s": {n: round(t["median_s"], 4) for n, t in timing.items()},
        "cpu_s": {n: round(t["median_cpu_s"], 4) for n, t in timing.items()},
        "runs_s": {n: [round(x, 4) for x in t["runs_s"]] for n, t in timing.items()},
        "counters": counters,
        "ratios": {"speedup_tree_vs_hf": round(timing["hf"]["median_s"] / timing["tree"]["median_s"], 3)},
    }
    _common.emit(rec)


if __name__ == "__main__":
    main()
