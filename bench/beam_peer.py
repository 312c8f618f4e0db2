"""bench/beam_peer.py: PRM-guided step beam search written independently of lrm's search stack.

    python bench/beam_peer.py [--problems 100] [--n 16] [--width 4] [--seed 0] [--policy DIR]
        [--prm DIR] [--no-refill] [--dedup] [--answer-terminal] [--quiet]
    python bench/beam_peer.py --lrm [OVERRIDE ...]   # lrm's beam, the same problems and figures

The textbook method as search-and-learn (``sal/search/beam_search.py``) runs it, on plain
transformers: lrm supplies only the problems, the prompt text and the grader (the ``arith_hard``
task from its registry; the prompt is ``task.prompt(problem)`` tokenized with the special tokens,
exactly what lrm's policies encode at the root).

- Policy: ``model.generate`` with ``do_sample=True, temperature=1.0, top_k=0, top_p=1.0``, at most
  64 new tokens, stopping at the step delimiter or EOS (both passed as ``eos_token_id``). Each
  beam's whole token sequence is re-sent every step (no prefix cache across steps). The root is
  one row per problem with ``num_return_sequences=n``; later steps send each kept beam once per
  candidate it owes (``num_return_sequences=1``), left-padded, one call for a batch of problems.
- A candidate is finished when its step stopped at EOS or ran out of tokens, or is empty
  (search-and-learn's rule: the answer line is an ordinary step and the solution ends with an
  EOS step). ``--answer-terminal`` also finishes a step that contains the answer prefix (lrm's
  convention), to measure that choice on its own.
- PRM: a plain ``AutoModelForCausalLM``; every candidate's whole path ``<bos> prompt (step \\n)*``
  is re-scored with one full forward pass (no cache), step score = the PRM's probability of the
  step's least likely token (the trailing ``\\n`` excluded; prm_config.json's likelihood
  read-out); path score = min over the steps. An empty step (EOS only) adds no step.
- Selection: finished candidates leave; the remaining ones are ranked by path score and the top
  ``n // width`` are kept (``--dedup``: identical texts count once first, search-and-learn's
  ``filter_duplicates``). Next step: with refill (default, search-and-learn) the kept beams are
  repeated cyclically to ``n`` candidates, so every step samples ``n`` candidates however many
  beams survive; ``--no-refill`` gives each kept beam exactly ``width`` candidates.
- At most 12 steps; the answer is the finished candidate with the best path score (ties: the
  first finished); a problem with none falls back to its best live candidate.

Per problem (stderr unless ``--quiet``): correct, answer, candidates sampled per step, distinct
candidate texts per step, distinct beams kept per step. Last stdout line: JSON with accuracy,
wall, per-step means over the problems still searching and the tokens computed (policy: prefill
+ decoded tokens of every row, padding excluded; PRM: every token of every re-scored path).

``--lrm [OVERRIDE ...]`` runs lrm's beam search instead (``lrm search task=arith_hard
policy=tree search=beam search.n=N search.beam_width=W reward=prm_token runtime.seed=SEED``
with SEED from ``--seed``, plus the given overrides, which replace a default of the same key,
e.g. ``search.duplicates=drop`` or ``policy=hf``) on the same problems
and prints the same figures, from ``BeamSearch.stats`` and the engine's compute counters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, load_average, machine, pin_threads, utc_now  # noqa: E402


class Beam:
    """One candidate: its step token lists (stop token included), texts and step scores."""

    __slots__ = ("pid", "steps", "texts", "scores", "done")

    def __init__(self, pid, steps=(), texts=(), scores=()):
        self.pid = pid
        self.steps, self.texts, self.scores = list(steps), list(texts), list(scores)
        self.done = False

    def child(self, toks, text):
        return Beam(self.pid, self.steps + [toks], self.texts + [text], self.scores)

    @property
    def text(self):
        return "".join(self.texts)

    @property
    def score(self):
        return min(self.scores) if self.scores else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=100, help="first N arith_hard test problems")
    ap.add_argument("--n", type=int, default=16, help="candidates per step per problem")
    ap.add_argument("--width", type=int, default=4, help="candidates per kept beam (n // width kept)")
    ap.add_argument("--max-steps", type=int, default=12)
    ap.add_argument("--max-step-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="problems per generate call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default=None, help="policy folder (default: the embedded default)")
    ap.add_argument("--prm", default=None, help="prm_token folder (default: the embedded default)")
    ap.add_argument("--no-refill", action="store_true", help="each kept beam gets exactly width candidates")
    ap.add_argument("--dedup", action="store_true", help="identical candidate texts count once before top-k")
    ap.add_argument("--answer-terminal", action="store_true", help="a step with the answer prefix finishes")
    ap.add_argument("--lrm", nargs="*", default=None, metavar="OVERRIDE",
                    help="run lrm's beam instead (`lrm search` with policy=tree search=beam "
                         "search.n/beam_width reward=prm_token, plus these overrides), same diagnostics")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    threads = pin_threads()
    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lrm_engine
    from lrm_engine.default_models import resolve_model_path

    torch.manual_seed(args.seed)
    load0, date = load_average(), utc_now()
    task = lrm_engine.build(lrm_engine.compose(["task=arith_hard"])).task
    exs = list(task.examples("test"))[: args.problems]
    if args.lrm is not None:
        return run_lrm(args, exs, task, threads, load0, date)
    pol_dir = resolve_model_path(args.policy, "policy", "--policy")
    prm_dir = resolve_model_path(args.prm, "prm", "--prm")
    policy = AutoModelForCausalLM.from_pretrained(str(pol_dir), local_files_only=True).eval()
    prm = AutoModelForCausalLM.from_pretrained(str(prm_dir), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(pol_dir), local_files_only=True)
    prm_cfg = json.loads((Path(prm_dir) / "prm_config.json").read_text())
    assert prm_cfg.get("readout") == "likelihood", prm_cfg
    delim = task.step.delimiter
    (nl,) = tok(delim, add_special_tokens=False)["input_ids"]
    tag = prm_cfg.get("step_tag_ids") or [nl]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    width = min(args.width, args.n)
    keep = max(1, args.n // width)
    counts = {"policy_tokens": 0, "prm_tokens": 0, "generate_calls": 0, "prm_forwards": 0}

    def generate(rows, nret):
        """rows: token lists -> per row nret lists of new tokens (stop token kept, pads dropped)."""
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, L - len(r):] = torch.tensor(r)
            mask[i, L - len(r):] = 1
        with torch.inference_mode():
            out = policy.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                top_p=1.0, max_new_tokens=args.max_step_tokens, eos_token_id=[eos, nl],
                pad_token_id=pad, num_return_sequences=nret)
        counts["generate_calls"] += 1
        res = []
        for j, seq in enumerate(out[:, L:].tolist()):
            new = []
            for t in seq:
                new.append(t)
                if t in (eos, nl):
                    break
            new = [t for t in new if t != pad or t in (eos, nl)]
            counts["policy_tokens"] += len(rows[j // nret]) + len(new)
            res.append(new)
        return [res[i * nret:(i + 1) * nret] for i in range(len(rows))]

    def prm_path(prompt_ids, beam):
        """PRM input ids of a beam's path and the (start, end) span of each non-empty step."""
        ids, spans = list(prompt_ids), []
        for st in beam.steps:
            body = [t for t in st if t != eos]
            if body and body[-len(tag):] == tag:
                body = body[: -len(tag)]
            if not body:
                continue  # an EOS-only step: no step to score
            spans.append((len(ids), len(ids) + len(body)))
            ids += body + tag
        return ids, spans

    def score(prompt_of, beams):
        """Re-score every beam's whole path (one batched full forward, right-padded)."""
        if not beams:
            return
        paths = [prm_path(prompt_of[b.pid], b) for b in beams]
        L = max(len(p) for p, _ in paths)
        ids = torch.full((len(paths), L), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, _) in enumerate(paths):
            ids[i, : len(p)] = torch.tensor(p)
            mask[i, : len(p)] = 1
            counts["prm_tokens"] += len(p)
        with torch.inference_mode():
            logp = torch.log_softmax(prm(input_ids=ids, attention_mask=mask).logits.float(), -1)
        counts["prm_forwards"] += 1
        for i, (b, (p, spans)) in enumerate(zip(beams, paths)):
            pt = torch.tensor(p)
            b.scores = []
            for s, e in spans:  # token t is predicted at position t - 1
                lp = logp[i, s - 1: e - 1].gather(1, pt[s:e, None])[:, 0]
                b.scores.append(float(lp.min().exp()))

    def finished(toks, text):
        if not toks or toks[-1] == eos or not text.strip():
            return True
        if toks[-1] != nl:  # ran out of tokens (search-and-learn: stop reason "length")
            return True
        return args.answer_terminal and task.step.answer_prefix in text

    t0 = time.perf_counter()
    per_problem, results = [], []
    for i in range(0, len(exs), args.batch):
        batch = exs[i: i + args.batch]
        prompt_of = {e.problem.id: tok(task.prompt(e.problem), add_special_tokens=True)["input_ids"]
                     for e in batch}
        diag = {e.problem.id: {"sampled": [], "distinct": [], "kept": []} for e in batch}
        done = {e.problem.id: [] for e in batch}
        live = {e.problem.id: [Beam(e.problem.id)] for e in batch}  # the root
        for depth in range(args.max_steps):
            rows, owners = [], []
            for pid, beams in live.items():
                if not beams:
                    continue
                if depth == 0:
                    plan = [(beams[0], args.n)]
                elif args.no_refill:
                    plan = [(b, width) for b in beams]
                else:  # search-and-learn: repeat the kept beams cyclically up to n
                    mult = [0] * len(beams)
                    for j in range(args.n):
                        mult[j % len(beams)] += 1
                    plan = list(zip(beams, mult))
                diag[pid]["sampled"].append(sum(m for _, m in plan))
                for b, m in plan:
                    for _ in range(m):
                        rows.append(b)
                        owners.append(pid)
            if not rows:
                break
            full = lambda b: prompt_of[b.pid] + [t for s in b.steps for t in s]  # noqa: E731
            if depth == 0:
                outs = [o for r in generate([full(b) for b in rows[:: args.n]], args.n) for o in r]
            else:
                outs = [r[0] for r in generate([full(b) for b in rows], 1)]
            cands = [b.child(o, tok.decode([t for t in o if t != eos])) for b, o in zip(rows, outs)]
            score(prompt_of, cands)
            by_pid = {pid: [] for pid in set(owners)}
            for pid in by_pid:
                diag[pid]["distinct"].append(len({c.text for c in cands if c.pid == pid}))
            for c in cands:
                c.done = finished(c.steps[-1], c.texts[-1])
                (done[c.pid] if c.done else by_pid[c.pid]).append(c)
            for pid, cs in by_pid.items():
                if args.dedup:
                    seen, uniq = set(), []
                    for c in cs:
                        if c.text not in seen:
                            seen.add(c.text)
                            uniq.append(c)
                    cs = uniq
                # search-and-learn: np.argsort(scores)[-keep:] (stable: later ones win ties)
                order = sorted(range(len(cs)), key=lambda j: cs[j].score)
                kept = [cs[j] for j in sorted(order[-keep:])] if depth < args.max_steps - 1 else []
                live[pid] = kept
                diag[pid]["kept"].append(len({c.text for c in kept}))
        for e in batch:
            pid = e.problem.id
            pool = done[pid] or live[pid]
            best = max(pool, key=lambda c: c.score) if pool else None
            sol = best.text if best is not None else ""
            ok = bool(task.grade(e, sol))
            results.append(ok)
            rec = {"id": pid, "correct": ok, "answer": task.extract_answer(sol),
                   "reference": e.reference, "score": None if best is None else round(best.score, 4),
                   "finished": len(done[pid]), "sampled": diag[pid]["sampled"],
                   "distinct": diag[pid]["distinct"], "kept": diag[pid]["kept"]}
            per_problem.append(rec)
            if not args.quiet:
                print(json.dumps(rec), file=sys.stderr)
    wall = time.perf_counter() - t0
    out = summary("beam_peer", date, per_problem, wall, threads, load0)
    out.update({"n": args.n, "width": width, "refill": not args.no_refill, "dedup": args.dedup,
                "answer_terminal": args.answer_terminal, "seed": args.seed,
                "tokens_computed": counts["policy_tokens"] + counts["prm_tokens"],
                "policy_tokens_computed": counts["policy_tokens"],
                "prm_tokens_computed": counts["prm_tokens"],
                "generate_calls": counts["generate_calls"], "prm_forwards": counts["prm_forwards"]})
    emit(out)
    return 0


def summary(bench, date, per_problem, wall, threads, load0) -> dict:
    """The figures both stacks report: accuracy, wall, per-step means over the live problems."""
    steps = max(len(r["sampled"]) for r in per_problem)

    def mean_at(key, d):
        vals = [r[key][d] for r in per_problem if len(r[key]) > d]
        return round(sum(vals) / max(1, len(vals)), 2)

    return {
        "bench": bench, "date": date, "problems": len(per_problem),
        "accuracy": sum(r["correct"] for r in per_problem) / len(per_problem), "wall_s": round(wall, 1),
        "candidates_per_step": [mean_at("sampled", d) for d in range(steps)],
        "distinct_candidates_per_step": [mean_at("distinct", d) for d in range(steps)],
        "distinct_kept_per_step": [mean_at("kept", d) for d in range(steps)],
        "problems_live_per_step": [sum(len(r["sampled"]) > d for r in per_problem) for d in range(steps)],
        "candidates_total": sum(sum(r["sampled"]) for r in per_problem),
        "threads": threads.get("torch_threads"), "load_average_start": load0,
        "load_average_end": load_average(), "machine": machine(),
    }


def run_lrm(args, exs, task, threads, load0, date) -> int:
    """lrm's own beam search on the same problems (what `lrm search` runs), same diagnostics."""
    import tempfile

    import lrm_engine
    from lrm_engine.core.engine import SearchContext, run_search
    from lrm_engine.core.results import ResultsFile

    base = ["task=arith_hard", "policy=tree", "search=beam", f"search.n={args.n}",
            f"search.beam_width={args.width}", "reward=prm_token", f"runtime.seed={args.seed}"]
    # A given override replaces the default of the same key (e.g. policy=hf).
    given = {o.split("=", 1)[0] for o in args.lrm}
    overrides = [o for o in base if o.split("=", 1)[0] not in given] + list(args.lrm)
    # Set after the policy group is chosen (a group override resets its fields).
    overrides += [f"search_run.max_steps={args.max_steps}", f"policy.max_step_tokens={args.max_step_tokens}"]
    if args.policy:
        overrides.append(f"policy.path={args.policy}")
    if args.prm:
        overrides.append(f"reward.path={args.prm}")
    cfg = lrm_engine.compose(overrides)
    c = lrm_engine.build(cfg)
    c.policy.configure(step=task.step)
    ctx = SearchContext(policy=c.policy, step=task.step, prompt=task.prompt, reward=c.reward,
                        sampling=getattr(c.policy, "sampling", None), ops=c.kernels,
                        aggregation=str(cfg.search_run.aggregation), max_steps=int(cfg.search_run.max_steps),
                        seed=int(cfg.runtime.seed))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        recs = run_search(c.search, ctx, [e.problem for e in exs], ResultsFile(Path(d) / "results.jsonl"),
                          batch_size=args.batch, progress=False)
        wall = time.perf_counter() - t0
    by_id = {e.problem.id: e for e in exs}
    per_problem, tot = [], {}
    for r in recs:
        e = by_id[r["id"]]
        for k, v in (r.get("counters") or {}).items():
            tot[k] = tot.get(k, 0) + int(v)
        st = c.search.stats[r["id"]]
        rec = {"id": r["id"], "correct": bool(task.grade(e, r["solution"] or "")), "answer": r["answer"],
               "reference": e.reference, "score": r["score"], "finished": sum(st["finished"]),
               "sampled": st["sampled"], "distinct": st["distinct"], "kept": st["kept"]}
        per_problem.append(rec)
        if not args.quiet:
            print(json.dumps(rec), file=sys.stderr)
    out = summary("beam_lrm", date, per_problem, wall, threads, load0)
    pol, prm = tot.get("policy_tokens_computed", 0), tot.get("reward_tokens_computed", 0)
    out.update({"overrides": overrides, "n": args.n, "width": args.width, "seed": args.seed,
                "tokens_computed": pol + prm, "policy_tokens_computed": pol, "prm_tokens_computed": prm,
                "timings_s": {k: round(v, 2) for k, v in ctx.timings.items()}})
    emit(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
