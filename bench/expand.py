"""bench/expand.py — PRM-guided beam search: prefix KV reuse (ours) vs re-encoding every path.

Workload (issue 3 §6): step-level beam search, 8 beams x 4 children (32 candidates per problem
per step), depth 8 (or until every beam finishes), 32 prompts, max_step_tokens 16; a tiny
random-init Llama (~3M parameters) as the policy and another as the `prm_token` PRM.

- ours: `SearchContext` + the built-in `beam` search (n=32, beam_width=4) over `HFPolicy` (each
  node's step KV stored once, children decoded on their parent's cached prefix; `--policy tree`:
  the `tree` policy, tree attention over the node segments with no per-child cache copy) and the
  incremental `TokenPRM` (only the new step's tokens on the parent's cached PRM KV).
- naive: the same search loop (same models, same sampling settings, same batching across
  problems) as open-source peers run it: every expansion re-encodes each child's whole path
  from the root in a fresh cache, then decodes the step token by token; every PRM call runs a
  full forward over the whole path (full-vocabulary logits, as peers do).

- hf_fair: the strongest Hugging Face loop a peer would actually run (the fair baseline): the
  same beam search, each beam's path prefilled ONCE and its k children drawn by
  `model.generate(num_return_sequences=k)` (which repeats the prefilled cache with
  `batch_repeat_interleave` instead of re-prefilling k copies; stops at the step delimiter or EOS
  through `eos_token_id=[newline, eos]`), and the PRM scored by one forward over each path with
  logits only at the last position (`logits_to_keep=1`). Its decode counts every row of the
  batch at every step (generate computes finished rows as padding until the batch ends).

All three sample (temperature 1, their own seeded generators), so the trees differ in content but
not in shape. `ratios`: tokens computed and wall time of each baseline / ours; the headline is
`*_vs_hf_fair`. Outputs are compared too: a greedy run (`--check-prompts` problems, 2 beams x 2
children, 4 steps) where ours, naive and hf_fair must finish the same solutions
(`outputs.*_equal`).

Sweep: `--sweep-prompts 8,32` repeats the sampled comparison at each number of prompts (the batch
of problems is the size that matters for batched expansion); the headline is `--prompts`.

    python bench/expand.py [--prompts 32] [--depth 8] [--repeats 1] [--policy hf|tree]
                           [--sweep-prompts 8,32] [--check-prompts 4]

Last stdout line: {"bench": "expand", "workload": ..., "wall_s": ..., "tokens": ..., "ratios": ...}
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, load_average, machine, pin_threads, utc_now  # noqa: E402

THREADS = pin_threads()

import warnings  # noqa: E402

import torch  # noqa: E402

warnings.simplefilter("ignore", RuntimeWarning)


def build_models(seed_policy=0, seed_prm=1):
    from lrm_engine.models.loading import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    kw = dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=688)
    pol = tiny_llama(len(tok), seed=seed_policy, **kw)
    prm = tiny_llama(len(tok), seed=seed_prm, **kw)
    return pol, prm, tok


def make_prompts(n):
    import random

    rng = random.Random(0)
    out = []
    for _ in range(n):
        a, b, c = rng.randint(10, 999), rng.randint(2, 99), rng.randint(1, 99)
        out.append(f"(({a}+{b})*{c})-{rng.randint(1, 50)}=\n")
    return out


# ----------------------------------------------------------------------------- ours
def run_ours(pol_model, prm_model, tok, prompts, depth, beams, children, max_step_tokens, seed,
             policy_kind="hf", greedy=False):
    from lrm_builtin.search.beam import BeamSearch

    from lrm_engine.core.engine import SearchContext
    from lrm_engine.core.interfaces import Problem, StepConvention
    from lrm_engine.models import SamplingConfig
    from lrm_engine.models.hf_policy import HFPolicy
    from lrm_engine.ops import get_backend
    from lrm_engine.rewards import TokenPRM

    step = StepConvention(delimiter="\n", answer_prefix="Answer: ")
    if policy_kind == "tree":
        from lrm_engine.models.tree_policy import TreePolicy

        policy = TreePolicy(pol_model, tok, step=step, kv_budget_mb=4096, max_step_tokens=max_step_tokens)
    else:
        policy = HFPolicy(pol_model, tok, step=step, kv_budget_mb=4096, max_step_tokens=max_step_tokens)
    prm = TokenPRM(prm_model, tok, kv_budget_mb=4096)
    ctx = SearchContext(policy=policy, step=step, prompt=lambda p: p.question, reward=prm,
                        sampling=SamplingConfig(temperature=1.0, seed=seed, greedy=greedy), ops=get_backend("auto"),
                        max_steps=depth)
    problems = [Problem(id=str(i), question=q) for i, q in enumerate(prompts)]
    search = BeamSearch(n=beams * children, beam_width=children)
    c0, t0 = time.process_time(), time.perf_counter()
    results = search.run(ctx, problems)
    wall = time.perf_counter() - t0
    return {
        "results": results,
        "wall_s": wall,
        "cpu_s": time.process_time() - c0,
        "policy_tokens": policy.counters.tokens_computed,
        "policy_reused": policy.counters.tokens_reused,
        "prm_tokens": prm.counters.tokens_computed,
        "prm_reused": prm.counters.tokens_reused,
        "policy_kv_peak_mb": policy.counters.bytes_resident_peak / 2**20,
        "prm_kv_peak_mb": prm.counters.bytes_resident_peak / 2**20,
        "timings_s": dict(ctx.timings),
    }


# ----------------------------------------------------------------------------- naive
class Naive:
    """Beam search that re-encodes each path from the root for every expansion and PRM call."""

    def __init__(self, pol_model, prm_model, tok, max_step_tokens, seed, chunk=256, greedy=False):
        self.pol, self.prm, self.tok = pol_model, prm_model, tok
        self.max_step_tokens = max_step_tokens
        self.greedy = greedy
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        self.chunk = chunk
        self.nl = tok("\n", add_special_tokens=False)["input_ids"][0]
        self.eos = tok.eos_token_id
        self.pad = tok.pad_token_id
        self.good = tok("+", add_special_tokens=False)["input_ids"][0]
        self.bad = tok("-", add_special_tokens=False)["input_ids"][0]
        self.policy_tokens = 0
        self.prm_tokens = 0

    def _left_pad(self, seqs):
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, L - len(s):] = torch.tensor(s)
            mask[r, L - len(s):] = 1
        return ids, mask

    @torch.inference_mode()
    def generate(self, paths):
        """One step for each path: prefill the whole path in a fresh cache, then sample."""
        out = []
        for i in range(0, len(paths), self.chunk):
            out.extend(self._generate(paths[i: i + self.chunk]))
        return out

    def _generate(self, paths):
        from transformers import DynamicCache

        ids, mask = self._left_pad(paths)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        cache = DynamicCache()
        o = self.pol(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                     logits_to_keep=1)
        self.policy_tokens += sum(len(p) for p in paths)
        cache = getattr(o, "cache", None) or o.past_key_values
        logits = o.logits[:, -1].float()
        R = len(paths)
        steps = [[] for _ in range(R)]
        done = torch.zeros(R, dtype=torch.bool)
        finished = [False] * R
        nxt = pos[:, -1] + 1
        for t in range(self.max_step_tokens):
            if self.greedy:
                x = logits.argmax(-1)
            else:
                x = torch.multinomial(logits.softmax(-1), 1, generator=self.gen).squeeze(1)
            for r in range(R):
                if not done[r]:
                    steps[r].append(int(x[r]))
                    if int(x[r]) == self.eos:
                        done[r] = True
                        finished[r] = True
                    elif int(x[r]) == self.nl or len(steps[r]) >= self.max_step_tokens:
                        done[r] = True
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(R, 1, dtype=torch.long)], 1)
            o = self.pol(input_ids=x[:, None], attention_mask=mask, position_ids=nxt[:, None], cache=cache,
                         use_cache=True)
            cache = getattr(o, "cache", None) or o.past_key_values
            self.policy_tokens += int((~done).sum())  # rows still generating (finished rows are padding)
            nxt = nxt + 1
            logits = o.logits[:, -1].float()
        return list(zip(steps, finished))

    @torch.inference_mode()
    def score(self, paths, ends):
        """Full forward of each whole path; P(good) at the last step's tag (full-vocabulary logits)."""
        out = []
        for i in range(0, len(paths), self.chunk):
            ps = paths[i: i + self.chunk]
            ids, mask = self._left_pad(ps)
            pos = (mask.cumsum(1) - 1).clamp_min(0)
            logits = self.prm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
            self.prm_tokens += sum(len(p) for p in ps)
            z = logits[:, -1][:, [self.good, self.bad]].float()
            out.extend(torch.softmax(z, -1)[:, 0].tolist())
        return out

    def step_for_prm(self, step):
        s = [x for x in step if x != self.eos]
        return s if s and s[-1] == self.nl else s + [self.nl]

    def generate_k(self, paths, k):
        """k children of each path: here every copy is prefilled from the root on its own."""
        return self.generate([p for p in paths for _ in range(k)])

    def run(self, prompts, depth, beams, children):
        B = len(prompts)
        # A beam: (policy path tokens, prm path tokens, min step score)
        roots = [(self.tok(p)["input_ids"], self.tok(p)["input_ids"], 1.0) for p in prompts]
        frontier = [[roots[b]] for b in range(B)]
        finished = [[] for _ in range(B)]
        for d in range(depth):
            k = beams * children if d == 0 else children
            rows = [(b, beam) for b in range(B) for beam in frontier[b] for _ in range(k)]
            if not rows:
                break
            gen = self.generate_k([beam[0] for b in range(B) for beam in frontier[b]], k)
            prm_paths = [beam[1] + self.step_for_prm(step) for (_, beam), (step, _) in zip(rows, gen)]
            scores = self.score(prm_paths, None)
            cands = [[] for _ in range(B)]
            for (b, beam), (step, fin), pp, s in zip(rows, gen, prm_paths, scores):
                c = (beam[0] + step, pp, min(beam[2], s))
                (finished[b] if fin else cands[b]).append(c)
            frontier = [sorted(c, key=lambda x: -x[2])[:beams] for c in cands]
        # The depth limit ends the search: like ours, the live beams count as candidates too.
        return [finished[b] + frontier[b] for b in range(B)]


class HFFair(Naive):
    """The fair HF baseline: generate(num_return_sequences=k) per beam, last-position PRM logits."""

    @torch.inference_mode()
    def generate_k(self, paths, k):
        if not self.greedy:
            torch.manual_seed(self.seed + self.policy_tokens)  # generate draws from torch's global RNG
        out = []
        for i in range(0, len(paths), max(1, self.chunk // k)):
            chunk = paths[i: i + max(1, self.chunk // k)]
            ids, mask = self._left_pad(chunk)
            # (greedy, the output check: generate refuses num_return_sequences > 1, and all k
            # children are the same argmax path: one row per path, repeated k times)
            reps = 1 if self.greedy else k
            seq = self.pol.generate(
                input_ids=ids, attention_mask=mask, do_sample=not self.greedy, temperature=None if self.greedy else 1.0,
                top_p=None if self.greedy else 1.0, top_k=None if self.greedy else 0, num_return_sequences=reps,
                max_new_tokens=self.max_step_tokens, eos_token_id=[self.nl, self.eos], pad_token_id=self.pad)
            new = seq[:, ids.shape[1]:]
            if self.greedy:
                new = new.repeat_interleave(k, 0)
            # Computed: each path's prompt once, then every row of the batch at every decode step.
            self.policy_tokens += sum(len(p) for p in chunk) + new.shape[0] * max(new.shape[1] - 1, 0)
            for row in new.tolist():
                step, finished = [], False
                for x in row:
                    step.append(x)
                    if x == self.eos:
                        finished = True
                        break
                    if x == self.nl:
                        break
                out.append((step, finished))
        return out

    @torch.inference_mode()
    def score(self, paths, ends):
        out = []
        for i in range(0, len(paths), self.chunk):
            ps = paths[i: i + self.chunk]
            ids, mask = self._left_pad(ps)
            pos = (mask.cumsum(1) - 1).clamp_min(0)
            logits = self.prm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                              logits_to_keep=1).logits
            self.prm_tokens += sum(len(p) for p in ps)
            z = logits[:, -1][:, [self.good, self.bad]].float()
            out.extend(torch.softmax(z, -1)[:, 0].tolist())
        return out


def run_naive(pol_model, prm_model, tok, prompts, depth, beams, children, max_step_tokens, seed,
              cls=Naive, greedy=False):
    nv = cls(pol_model, prm_model, tok, max_step_tokens, seed, greedy=greedy)
    c0, t0 = time.process_time(), time.perf_counter()
    finished = nv.run(prompts, depth, beams, children)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "policy_tokens": nv.policy_tokens,
            "prm_tokens": nv.prm_tokens, "finished": finished}


def texts_by_problem(tok, prompts, ours=None, finished=None):
    """Each problem's set of candidate solution texts, decoded as ours decodes (special tokens
    skipped; newlines dropped: ours joins steps by it)."""
    if ours is not None:
        return [sorted({c["text"].replace("\n", "") for c in r.candidates}) for r in ours]
    out = []
    for p, cands in zip(prompts, finished):
        n = len(tok(p)["input_ids"])
        out.append(sorted({tok.decode(c[0][n:], skip_special_tokens=True).replace("\n", "")
                           for c in cands}))
    return out


def compare_outputs(pol, prm, tok, args) -> dict:
    """Greedy run on a few prompts: ours, naive and hf_fair must reach the same candidates."""
    prompts = make_prompts(args.check_prompts)
    kw = dict(depth=4, beams=2, children=2, max_step_tokens=args.max_step_tokens, seed=0)
    o = run_ours(pol, prm, tok, prompts, policy_kind=args.policy, greedy=True, **kw)
    f = run_naive(pol, prm, tok, prompts, cls=HFFair, greedy=True, **kw)
    n = run_naive(pol, prm, tok, prompts, greedy=True, **kw)
    t_o = texts_by_problem(tok, prompts, ours=o["results"])
    t_f = texts_by_problem(tok, prompts, finished=f["finished"])
    t_n = texts_by_problem(tok, prompts, finished=n["finished"])
    return {"problems": len(prompts), "greedy_beams_x_children_x_depth": "2x2x4",
            "hf_fair_equal": sum(a == b for a, b in zip(t_o, t_f)),
            "naive_equal": sum(a == b for a, b in zip(t_o, t_n))}


def compare_sampled(pol, prm, tok, args, n_prompts) -> dict:
    """ours / naive / hf_fair, interleaved repeats, on n_prompts problems."""
    prompts = make_prompts(n_prompts)
    runs = {"ours": [], "naive": [], "hf_fair": []}
    kw = dict(depth=args.depth, beams=args.beams, children=args.children, max_step_tokens=args.max_step_tokens)
    for r in range(args.repeats):  # interleaved, so background load falls on all alike
        runs["ours"].append(run_ours(pol, prm, tok, prompts, seed=r, policy_kind=args.policy, **kw))
        runs["hf_fair"].append(run_naive(pol, prm, tok, prompts, seed=r, cls=HFFair, **kw))
        runs["naive"].append(run_naive(pol, prm, tok, prompts, seed=r, **kw))
        print(f"  prompts {n_prompts} run {r}: " + ", ".join(f"{k} {v[-1]['wall_s']:.1f}s" for k, v in runs.items()),
              file=sys.stderr)
    import statistics

    wall = {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x["cpu_s"] for x in v) for k, v in runs.items()}
    o, n, f = runs["ours"][0], runs["naive"][0], runs["hf_fair"][0]
    return {
        "prompts": n_prompts,
        "wall_s": {k: round(v, 3) for k, v in wall.items()},
        "wall_runs_s": {k: [round(x["wall_s"], 3) for x in v] for k, v in runs.items()},
        # Process CPU time (one thread): what the shared, loaded cores cannot inflate.
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "tokens": {"ours_policy": o["policy_tokens"], "ours_policy_reused": o["policy_reused"],
                   "ours_prm": o["prm_tokens"], "ours_prm_reused": o["prm_reused"],
                   "naive_policy": n["policy_tokens"], "naive_prm": n["prm_tokens"],
                   "hf_fair_policy": f["policy_tokens"], "hf_fair_prm": f["prm_tokens"]},
        "ours_kv_peak_mb": {"policy": round(o["policy_kv_peak_mb"], 1), "prm": round(o["prm_kv_peak_mb"], 1)},
        "ours_timings_s": {k: round(v, 3) for k, v in o["timings_s"].items()},
        "ratios": {
            "policy_tokens_vs_hf_fair": round(f["policy_tokens"] / o["policy_tokens"], 3),
            "prm_tokens_vs_hf_fair": round(f["prm_tokens"] / o["prm_tokens"], 3),
            "speedup_vs_hf_fair": round(wall["hf_fair"] / wall["ours"], 3),
            "cpu_speedup_vs_hf_fair": round(cpu["hf_fair"] / cpu["ours"], 3),
            "policy_tokens_vs_naive": round(n["policy_tokens"] / o["policy_tokens"], 3),
            "prm_tokens_vs_naive": round(n["prm_tokens"] / o["prm_tokens"], 3),
            "speedup_vs_naive": round(wall["naive"] / wall["ours"], 3),
            "cpu_speedup_vs_naive": round(cpu["naive"] / cpu["ours"], 3),
        },
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--beams", type=int, default=8)
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--max-step-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sweep-prompts", default="8,32",
                    help="comma-separated prompt counts for the sampled comparison; --prompts is the headline")
    ap.add_argument("--check-prompts", type=int, default=4, help="problems in the greedy output check")
    ap.add_argument("--policy", choices=("hf", "tree"), default="hf",
                    help="our policy: hf (per-node prefix caches) or tree (tree attention over node segments)")
    args = ap.parse_args()
    pol, prm, tok = build_models()
    n_params = sum(p.numel() for p in pol.parameters())
    wl = dict(prompts=args.prompts, beams=args.beams, children=args.children, depth=args.depth,
              max_step_tokens=args.max_step_tokens, policy_params=n_params, prm_params=n_params,
              vocab=len(tok), repeats=args.repeats, policy=args.policy)
    print(f"expand bench: {wl}", file=sys.stderr)
    outputs = compare_outputs(pol, prm, tok, args)
    print(f"  greedy output check: {outputs}", file=sys.stderr)
    sizes = sorted({int(x) for x in args.sweep_prompts.split(",") if x.strip()} | {args.prompts})
    sweep = [compare_sampled(pol, prm, tok, args, n) for n in sizes]
    head = next(r for r in sweep if r["prompts"] == args.prompts)
    emit({
        "bench": "expand",
        "date": utc_now(),
        "machine": machine(),
        "load_average": load_average(),
        "threads": THREADS,
        "workload": wl,
        "wall_s": head["wall_s"],
        "cpu_s": head["cpu_s"],
        "tokens": head["tokens"],
        "ours_kv_peak_mb": head["ours_kv_peak_mb"],
        "ours_timings_s": head["ours_timings_s"],
        "ratios": head["ratios"],
        "outputs": outputs,
        "sweep": [{k: r[k] for k in ("prompts", "wall_s", "tokens", "ratios")} for r in sweep],
        "targets": {"speedup_vs_hf_fair": 2, "policy_tokens_vs_naive": 5, "prm_tokens_vs_naive": 4,
                    "speedup_vs_naive": 3},
    })


if __name__ == "__main__":
    main()
