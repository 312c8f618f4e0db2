"""ReST-MCTS* self-training (Zhang et al. 2024): the loop behind ``lrm train objective=rest_mcts``.

Each iteration ``i`` (folder ``<run_dir>/iter_<i>/``):

1. Search. The next ``problems_per_iteration`` problems of ``split`` are searched with
   :class:`lrm_builtin.search.mcts.MCTSSearch` (PUCT; leaf values = the PRM's aggregated path
   score) over the current policy (:class:`HFPolicy`) and the current PRM (:class:`TokenPRM`), the
   whole trees exported (``SearchContext.export_trees``) to ``search.jsonl`` (resumable per
   problem). The search sees only the problems, never the answers.
2. Verify. After the search, every finished solution in every tree (terminal node) is graded by
   the task's verifier. Correct traces (deduplicated per problem) become SFT examples for the
   policy; every node above a finished solution gets a value target
   (:func:`value_targets`, the ReST-MCTS* update, see :mod:`lrm_engine.objectives.rest_mcts`),
   and each finished path becomes a PRM record with those targets as soft step labels.
3. Train. The policy: ``policy_steps`` SFT steps on the correct traces (``iter_<i>/policy``);
   the PRM: ``prm_steps`` steps of the ``prm`` objective with soft labels (``iter_<i>/prm``).
   Both continue from the previous iteration's weights.
4. Log. ``search_accuracy`` (the MCTS answer graded), ``solved_frac`` (problems with at least one
   correct trace), ``traces``, ``prm_records``, and the greedy accuracy on ``eval_problems``
   held-out problems after the iteration (``greedy_accuracy``; iteration 0 row: before any
   training) — to ``iterations.jsonl``, TensorBoard (``rest/<metric>``) and stderr.

Resume: a finished iteration writes ``iter_<i>/done.json`` and its two model folders; a rerun
starts from the last finished iteration's models, and an interrupted iteration resumes its search
file and its two trainings from their checkpoints.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch


def value_targets(parents: Sequence[int], finished: dict[int, bool]) -> dict[int, float]:
    """ReST-MCTS* value targets of the nodes above finished solutions.

    ``parents[n]``: parent slot of node n (-1 at the root, slot 0; parents before children);
    ``finished``: node -> verified correct, for the finished solutions (terminal nodes).
    Returns node -> v for every non-root node with a finished solution in its subtree (itself
    included), along root-to-node paths: ``v_0 = 0``, ``v_k = clip(v_{k-1} + w_k, 0, 1)``,
    ``w_k = (1 - v_{k-1}) / (m_k + 1) * (1 - 2 r_k)`` (see :mod:`lrm_engine.objectives.rest_mcts`).
    """
    n = len(parents)
    inf = math.inf
    d_ok = [inf] * n  # steps to the nearest correct finished solution below (or at) the node
    d_any = [inf] * n
    for node, ok in finished.items():
        d_any[node] = 0.0
        if ok:
            d_ok[node] = 0.0
    for node in range(n - 1, 0, -1):  # children after parents: sweep upward
        p = parents[node]
        if p >= 0:
            d_ok[p] = min(d_ok[p], d_ok[node] + 1)
            d_any[p] = min(d_any[p], d_any[node] + 1)
    v = [0.0] * n
    out: dict[int, float] = {}
    for node in range(1, n):
        p = parents[node]
        vp = v[p] if p >= 0 else 0.0
        if d_any[node] == inf:
            v[node] = vp
            continue
        r = 0.0 if d_ok[node] < inf else 1.0
        m = d_ok[node] if r == 0.0 else d_any[node]
        w = (1.0 - vp) / (m + 1.0) * (1.0 - 2.0 * r)
        v[node] = min(1.0, max(0.0, vp + w))
        out[node] = v[node]
    return out


def _path(parents: Sequence[int], node: int) -> list[int]:
    out = []
    while node > 0:
        out.append(node)
        node = parents[node]
    return out[::-1]


def harvest(task, example, tree: dict) -> tuple[list[str], list[Any], dict]:
    """``(correct solution texts, PRM records, stats)`` of one exported search tree."""
    from .prm_data import PRMRecord

    nodes = tree["nodes"]
    parents = [int(nd.get("parent", -1)) for nd in nodes]
    texts = [nd.get("text", "") for nd in nodes]
    finished = {}
    full = {}
    for nd in nodes:
        if nd.get("terminal") and nd["id"] > 0:
            path = _path(parents, nd["id"])
            full[nd["id"]] = "".join(texts[m] for m in path)
            finished[nd["id"]] = bool(task.grade(example, full[nd["id"]]))
    targets = value_targets(parents, finished)
    delim = task.step.delimiter
    correct = sorted({full[n] for n, ok in finished.items() if ok})
    records = []
    for node in finished:
        path = _path(parents, node)
        steps = [texts[m][:-len(delim)] if texts[m].endswith(delim) else texts[m] for m in path]
        labels = [targets[m] for m in path]
        if steps and all(s.strip() for s in steps):
            records.append(PRMRecord(prompt=task.prompt(example.problem), completions=tuple(steps),
                                     labels=tuple(labels), meta={"id": example.problem.id}))
    return correct, records, {"finished": len(finished), "correct": sum(finished.values())}


def train_rest_mcts(run_dir, *, task, policy: str, prm: str, iterations: int = 3,
                    problems_per_iteration: int = 64, split: str = "train", simulations: int = 12,
                    k: int = 4, num_leaves: int = 2, c1: float = 1.25, aggregation: str = "min",
                    temperature: float = 1.0, max_steps: int = 10, max_step_tokens: int = 24,
                    search_batch: int = 32, policy_steps: int = 20, policy_batch: int = 16,
                    policy_lr: float = 1e-4, prm_steps: int = 20, prm_batch: int = 16,
                    prm_lr: float = 1e-4, eval_problems: int = 100, eval_split: str = "test",
                    seed: int = 0, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Run ReST-MCTS* iterations (module docstring); returns a summary with per-iteration rows."""
    from lrm_builtin.search.mcts import MCTSSearch

    from ..core.engine import SearchContext, run_search
    from ..core.results import ResultsFile
    from ..models.hf_policy import HFPolicy
    from ..models.sampling import SamplingConfig
    from ..objectives.prm import PRMObjective
    from ..rewards.prm_token import TokenPRM
    from .data import SFTExample
    from .prm import load_prm_token, read_prm_config, train_prm
    from .rl_run import greedy_accuracy, load_policy
    from .sft import train_sft

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    start, pol_dir, prm_dir = 0, str(policy), str(prm)
    for i in range(iterations):
        d = run_dir / f"iter_{i}" / "done.json"
        if d.is_file():
            done = json.loads(d.read_text())
            start, pol_dir, prm_dir = i + 1, done["policy_dir"], done["prm_dir"]
    pmodel, ptok = load_policy(pol_dir)
    rmodel, rtok, rcfg = load_prm_token(prm_dir, device=device)
    pmodel.to(device)
    rows_file = run_dir / "iterations.jsonl"
    rows = [json.loads(l) for l in rows_file.read_text().splitlines()] if rows_file.is_file() else []
    rows = [r for r in rows if r["iteration"] <= start]  # row i+1 = iteration i done
    writer = None
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1)
    except Exception:  # pragma: no cover - tensorboard missing
        writer = None

    def log(it: int, row: dict) -> None:
        rows.append(row)
        with open(rows_file, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        if writer is not None:
            for key, val in row.items():
                if isinstance(val, (int, float)) and key != "iteration":
                    writer.add_scalar(f"rest/{key}", val, it)
            writer.flush()
        print(f"lrm train rest_mcts: iteration {it}: " + ", ".join(
            f"{k2}={v:.3f}" if isinstance(v, float) else f"{k2}={v}" for k2, v in row.items()
            if k2 != "iteration"), file=sys.stderr, flush=True)

    ev_kw = dict(split=eval_split, num_problems=eval_problems, max_steps=max_steps,
                 max_step_tokens=max_step_tokens, batch_size=search_batch)
    if start == 0 and not rows and eval_problems > 0:
        ev = greedy_accuracy(pmodel, ptok, task, **ev_kw)
        log(0, {"iteration": 0, "greedy_accuracy": ev["accuracy"], "wall_s": 0.0})
    all_train = list(task.examples(split))
    for it in range(start, iterations):
        t0 = time.perf_counter()
        d = run_dir / f"iter_{it}"
        d.mkdir(parents=True, exist_ok=True)
        lo = (it * problems_per_iteration) % max(len(all_train), 1)
        exs = [all_train[(lo + j) % len(all_train)] for j in range(problems_per_iteration)]
        by_id = {ex.problem.id: ex for ex in exs}
        # 1. search (the policy and the PRM of this iteration's start)
        hp = HFPolicy(pmodel, ptok, step=task.step, max_step_tokens=max_step_tokens, kv_budget_mb=256)
        reward = TokenPRM(rmodel, rtok, good_token=rcfg["good_token"], bad_token=rcfg["bad_token"],
                          step_tag=rcfg["step_tag"], readout=rcfg.get("readout", "tag"), kv_budget_mb=256)
        ctx = SearchContext(policy=hp, reward=reward, step=task.step, prompt=task.prompt,
                            sampling=SamplingConfig(temperature=temperature, seed=seed + it),
                            aggregation=aggregation, max_steps=max_steps, export_trees=True)
        search = MCTSSearch(simulations=simulations, k=k, num_leaves=num_leaves, c1=c1)
        recs = run_search(search, ctx, [ex.problem for ex in exs], ResultsFile(d / "search.jsonl"),
                          batch_size=search_batch, progress=progress)
        # 2. verify after the search; harvest traces and value targets
        sft, prm_recs, solved, search_ok, finished = [], [], 0, 0, 0
        for r in recs:
            ex = by_id.get(r["id"])
            if ex is None:
                continue
            search_ok += bool(task.grade(ex, r["solution"] or ""))
            correct, pr, st = harvest(task, ex, r["tree"])
            solved += bool(correct)
            finished += st["finished"]
            sft += [SFTExample(prompt=task.prompt(ex.problem), completion=c, meta={"id": ex.problem.id})
                    for c in correct]
            prm_recs += pr
        # 3. train both
        pol_out, prm_out = pol_dir, prm_dir
        if sft and policy_steps > 0:
            res = train_sft(d / "policy", examples=sft, model=pmodel, tokenizer=ptok,
                            data=dict(max_length=256),
                            train=dict(total_steps=policy_steps, micro_batch_size=policy_batch,
                                       lr=policy_lr, warmup_steps=0, save_every=0, keep_last=1,
                                       seed=seed + it, device=device, progress=progress,
                                       tensorboard=False))
            pol_out = res.model_dir
        if prm_recs and prm_steps > 0:
            obj = PRMObjective(good_token=rcfg["good_token"], bad_token=rcfg["bad_token"],
                               label_mode="soft", readout=rcfg.get("readout", "tag"))
            res = train_prm(d / "prm", records=prm_recs, task=task, step_tag=rcfg["step_tag"],
                            objective=obj, model=rmodel, tokenizer=rtok,
                            train=dict(total_steps=prm_steps, micro_batch_size=prm_batch, lr=prm_lr,
                                       warmup_steps=0, save_every=0, keep_last=1, seed=seed + it,
                                       device=device, progress=progress, tensorboard=False),
                            evaluate=False)
            prm_out = res.model_dir
        pmodel.eval()
        rmodel.eval()
        row = {"iteration": it + 1, "problems": len(recs),
               "search_accuracy": search_ok / max(len(recs), 1),
               "solved_frac": solved / max(len(recs), 1), "traces": len(sft),
               "finished_solutions": finished, "prm_records": len(prm_recs)}
        if eval_problems > 0:
            row["greedy_accuracy"] = greedy_accuracy(pmodel, ptok, task, **ev_kw)["accuracy"]
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        (d / "done.json").write_text(json.dumps({"policy_dir": pol_out, "prm_dir": prm_out, **row}))
        pol_dir, prm_dir = pol_out, prm_out
        log(it + 1, row)
    if writer is not None:
        writer.close()
    # final models at <run_dir>/model (policy) and <run_dir>/prm_model
    from .checkpoint import save_model_quietly

    save_model_quietly(pmodel, run_dir / "model")
    ptok.save_pretrained(str(run_dir / "model"))
    save_model_quietly(rmodel, run_dir / "prm_model")
    rtok.save_pretrained(str(run_dir / "prm_model"))
    (run_dir / "prm_model" / "prm_config.json").write_text(json.dumps(read_prm_config(prm_dir), indent=1))
    out = {"run_dir": str(run_dir), "model_dir": str(run_dir / "model"),
           "prm_dir": str(run_dir / "prm_model"), "iterations": rows,
           "greedy_before": rows[0].get("greedy_accuracy") if rows else None,
           "greedy_after": rows[-1].get("greedy_accuracy") if rows else None,
           "wall_s": round(time.perf_counter() - t_start, 2)}
    (run_dir / "result.json").write_text(json.dumps(out, indent=1))
    return out
