"""bench/prm_diagnosis.py: what does the embedded default's PRM know about step correctness?

    python bench/prm_diagnosis.py [--policy DIR] [--prm DIR] [--problems 150] [--samples 4]

Defaults: the embedded default policy and PRM that `lrm run` installs. Two step sets, each with
the arith task's exact prefix labels (step i good iff steps 0..i are correct):

- ``noise``: gold solutions to held-out test problems, half with one injected wrong step carried
  through (the set ``lrm run`` reports its PRM AUROC on);
- ``policy``: ``--samples`` solutions per held-out problem sampled from the policy at T=0.7 (the
  steps a search actually asks the PRM to judge).

On each, step AUROC of: the PRM; ``-(step index)`` (the position baseline: prefix labels fall
with depth, so a PRM that only learned "later steps are worse" gets this); and the policy's own
likelihood (the lowest token log-probability in the step, running minimum along the solution).
On ``noise`` also the AUROC on the steps up to the first wrong one (does the scorer catch the
wrong step itself). Finally best-of-N on the policy samples, picked by the PRM's min-step score
and by the policy likelihood, against greedy and pass@N: how much of the gap each closes.

Prints a table to stderr and, as its last line, ``{"bench": "prm_diagnosis", ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, pin_threads, utc_now  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default=None, help="SFT policy folder (default: the embedded default)")
    ap.add_argument("--prm", default=None, help="prm_token folder (default: the embedded default)")
    ap.add_argument("--problems", type=int, default=150, help="held-out arith_hard test problems")
    ap.add_argument("--samples", type=int, default=4, help="policy samples per problem")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    threads = pin_threads()
    import torch
    from transformers import AutoModelForCausalLM

    import lrm_engine
    from lrm_engine.default_models import resolve_model_path
    from lrm_engine.metrics import auroc
    from lrm_engine.tokenization import load_tokenizer
    from lrm_engine.train.prm import load_prm_token, prm_step_metrics, score_steps

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    load0 = load_average()
    task = lrm_engine.build(lrm_engine.compose(["task=arith_hard"])).task
    pol_dir = resolve_model_path(args.policy, "policy", "--policy")
    prm_dir = resolve_model_path(args.prm, "prm", "--prm")
    policy = AutoModelForCausalLM.from_pretrained(str(pol_dir), local_files_only=True).eval()
    ptok = load_tokenizer(pol_dir)
    prm, rtok, rcfg = load_prm_token(prm_dir)
    delim = task.step.delimiter

    @torch.no_grad()
    def likelihood_scores(prompt: str, steps: list[str]) -> list[float]:
        """Running min over steps of the step's lowest token log-prob under the policy."""
        text = prompt + "".join(s + delim for s in steps)
        ids = ptok.encode(text)
        lp = torch.log_softmax(policy(torch.tensor([ids])).logits[0].float(), -1)
        # token i+1 given 0..i; steps located by re-encoding the growing prefix
        out, run, start = [], 0.0, len(ptok.encode(prompt))
        acc = prompt
        for s in steps:
            acc += s + delim
            end = len(ptok.encode(acc))
            vals = [float(lp[j - 1, ids[j]]) for j in range(start, end)]
            run = min([run] + vals)
            out.append(run)
            start = end
        return out

    def prm_scores(pairs):
        return score_steps(prm, rtok, pairs, good_token_id=rcfg["good_token_id"],
                           bad_token_id=rcfg["bad_token_id"], step_tag=delim,
                           readout=rcfg.get("readout", "tag"))

    # --- the noise set
    sols = task.noisy_solutions("test", fraction=0.5, seed=1, limit=args.problems)
    pairs = [(task.prompt(s.example.problem), list(s.steps)) for s in sols]
    labels = [task.prefix_labels(s.example, s.steps) for s in sols]
    errs = [s.error_step for s in sols]
    noise = {"prm": prm_step_metrics(prm_scores(pairs), labels, errs),
             "likelihood": prm_step_metrics([likelihood_scores(p, st) for p, st in pairs], labels, errs)}

    # --- the policy set
    exs = [e for _, e in zip(range(args.problems), task.examples("test"))]
    eos = ptok.eos_token_id
    samples, greedy_ok = [], 0
    for e in exs:
        prompt = task.prompt(e.problem)
        ids = torch.tensor([ptok.encode(prompt)])
        with torch.no_grad():
            g = policy.generate(ids, max_new_tokens=128, do_sample=False, pad_token_id=ptok.pad_token_id)
            s = policy.generate(ids.repeat(args.samples, 1), max_new_tokens=128, do_sample=True,
                                temperature=0.7, top_k=0, top_p=1.0, pad_token_id=ptok.pad_token_id)
        greedy_ok += task.grade(e, ptok.decode(g[0, ids.shape[1]:], skip_special_tokens=True))
        group = []
        for r in range(args.samples):
            toks = s[r, ids.shape[1]:].tolist()
            if eos in toks:
                toks = toks[: toks.index(eos)]
            steps = [x for x in ptok.decode(toks, skip_special_tokens=True).split(delim) if x]
            if steps:
                group.append((prompt, steps, task.grade(e, task.step.join_steps(steps)),
                              task.prefix_labels(e, steps)))
        samples.append(group)
    flat = [x for g in samples for x in g]
    ps = prm_scores([(p, st) for p, st, _, _ in flat])
    ls = [likelihood_scores(p, st) for p, st, _, _ in flat]
    plab = [lab for _, _, _, lab in flat]
    no_err = [-1] * len(flat)
    pol = {"prm": prm_step_metrics(ps, plab, no_err), "likelihood": prm_step_metrics(ls, plab, no_err)}

    # --- best-of-N on the policy samples
    k, picks = 0, {"prm_min": 0, "likelihood": 0}
    passed = 0
    for g in samples:
        sc_p, sc_l = ps[k:k + len(g)], ls[k:k + len(g)]
        k += len(g)
        if not g:
            continue
        passed += any(ok for _, _, ok, _ in g)
        picks["prm_min"] += g[max(range(len(g)), key=lambda i: min(sc_p[i]))][2]
        picks["likelihood"] += g[max(range(len(g)), key=lambda i: sc_l[i][-1])][2]
    n = len(exs)
    acc = {"greedy": greedy_ok / n, f"pass@{args.samples}": passed / n,
           **{f"best_of_{args.samples}_{key}": v / n for key, v in picks.items()}}
    gap = acc[f"pass@{args.samples}"] - acc["greedy"]
    closed = {key: round((acc[f"best_of_{args.samples}_{key}"] - acc["greedy"]) / gap, 4) if gap > 0 else None
              for key in picks}

    rows = []
    for set_name, d in (("noise", noise), ("policy", pol)):
        for scorer in ("prm", "likelihood"):
            m = d[scorer]
            rows.append((set_name, scorer, m["step_auroc"], m["error_step_auroc"] if set_name == "noise" else None,
                         m["position_baseline_auroc"], m["num_steps"]))
    print("| steps | scorer | step AUROC | AUROC to first error | position baseline | steps |", file=sys.stderr)
    print("|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        print("| " + " | ".join("" if v is None else str(v) for v in r) + " |", file=sys.stderr)
    print(json.dumps(acc), file=sys.stderr)
    print(json.dumps({"bench": "prm_diagnosis", "date": utc_now(), "machine": machine(), "threads": threads,
                      "load_average_start": load0, "load_average_end": load_average(),
                      "policy": str(pol_dir), "prm": str(prm_dir), "problems": n, "samples": args.samples,
                      "noise": noise, "policy_samples": pol, "accuracy": acc, "gap_closed": closed,
                      "wall_s": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
