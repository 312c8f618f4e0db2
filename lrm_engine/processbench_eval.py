"""ProcessBench from a reward model: score every step, predict the first error, the paper's table.

    lrm evaluate task=processbench reward=prm_token reward.path=<dir> task.limit=50

1. Scores. Every step of every solution of the configured subsets (with ``task.limit``: a fixed
   sample of that many per subset, the ids whose sha256 sorts first — the files list erroneous
   samples first, so their head is no sample) is scored by the reward model through the reward door
   (:func:`lrm_engine.rewards.given_steps.score_given_steps`: the solutions as chains of a tree,
   depth by depth, each step on the cached prefix). Scores go to ``task.scores_file`` (default
   ``<runtime.output_dir>/processbench_scores.jsonl``), one record per solution as each batch
   finishes; a rerun skips the solutions already there (resumable; a file written under another
   reward / data setting is refused, see lrm_engine/core/results.py).
2. Threshold. The prediction for a solution is its first step scored below the threshold ``t``
   (-1 if none), as the paper does for PRMs. ``task.held_out`` > 0: a share of each subset (the
   samples whose sha256(id) sorts first) is held out, ``t`` is swept over every distinct score
   there (plus one above the highest; the held-out ids: those whose sha256 of ``"held_out:" + id``
   sorts first) and the value with the best mean-over-subsets F1 on the
   held-out part is chosen (ties: the one nearest 0.5); the table is computed on the other
   samples only. ``task.held_out`` = 0: ``t = task.threshold`` and every sample is evaluated.
3. Table. Per subset: error accuracy (erroneous samples whose predicted index equals the label),
   correct accuracy (correct samples predicted -1), F1 (their harmonic mean); pooled; the mean
   F1 over subsets (the paper's "Avg."): :func:`lrm_builtin.tasks.processbench.compute_metrics`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

SCORES_FILE = "processbench_scores.jsonl"


def predict(scores: Sequence[float], threshold: float) -> int:
    """The first step scored below ``threshold`` (a NaN score never is), or -1."""
    for i, s in enumerate(scores):
        if not math.isnan(s) and s < threshold:
            return i
    return -1


def _by_hash(ids: Sequence[str], salt: str = "") -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256((salt + i).encode()).hexdigest())


def sample_ids(ids: Sequence[str], limit: int | None) -> set[str]:
    """``limit`` ids whose sha256 sorts first (all when ``limit`` is None): a fixed sample."""
    return set(ids) if limit is None else set(_by_hash(ids)[:limit])


def split_held_out(ids: Sequence[str], fraction: float) -> set[str]:
    """The ``round(fraction * len(ids))`` ids whose sha256 of ``"held_out:" + id`` sorts first
    (a fixed, seedless split, independent of :func:`sample_ids`)."""
    k = int(round(fraction * len(ids)))
    return set(_by_hash(ids, "held_out:")[:k])


def avg_f1(samples: Mapping[str, Sequence[tuple[int, Sequence[float]]]], threshold: float) -> float:
    """Mean over subsets (with samples) of the F1 of ``(label, scores)`` samples at ``threshold``."""
    from lrm_builtin.tasks.processbench import compute_metrics

    f1s = [compute_metrics([(lab, predict(sc, threshold)) for lab, sc in rows])["f1"]
           for rows in samples.values() if rows]
    return sum(f1s) / len(f1s) if f1s else 0.0


def choose_threshold(samples: Mapping[str, Sequence[tuple[int, Sequence[float]]]]) -> tuple[float, float]:
    """``(threshold, its mean F1)`` maximising the mean-over-subsets F1 on ``samples`` (subset
    -> ``(label, step scores)``); candidates: every distinct finite score, and one above the
    highest (every step flagged). Ties go to the candidate nearest 0.5, then the smaller."""
    vals = sorted({float(s) for rows in samples.values() for _, sc in rows for s in sc
                   if not math.isnan(s)})
    if not vals:
        return 0.5, avg_f1(samples, 0.5)
    cands = vals + [math.nextafter(vals[-1], math.inf)]
    best = max(cands, key=lambda t: (round(avg_f1(samples, t), 12), -abs(t - 0.5), -t))
    return best, avg_f1(samples, best)


def _fingerprint(cfg, task) -> dict[str, Any]:
    from omegaconf import OmegaConf

    reward = OmegaConf.to_container(cfg.reward, resolve=True) if cfg.get("reward") is not None else None
    if isinstance(reward, dict):
        for k in ("device", "backend", "kv_budget_mb"):
            reward.pop(k, None)
        if reward.get("path") is None and "path" in reward:
            from lrm_engine.default_models import default_model_dir

            reward["path"] = str(default_model_dir("prm"))
    conf = {"reward": reward, "data_dir": str(task.data_dir), "delimiter": task.step.delimiter,
            "prompt_template": task.prompt_template}
    blob = json.dumps(conf, sort_keys=True, default=str)
    return {"fingerprint": hashlib.sha256(blob.encode()).hexdigest()[:16], "config": conf}


def evaluate_reward(task, cfg, reward) -> dict[str, Any]:
    """Score, choose the threshold, print the table; the flat metrics (see the module doc)."""
    from lrm_builtin.tasks.processbench import flatten_metrics, format_table

    from lrm_engine.core.results import ResultsFile
    from lrm_engine.rewards.given_steps import check_step_reward, score_given_steps

    check_step_reward(reward)  # before any file is written
    items = []
    for s in task.subsets:
        keep = sample_ids([it.id for it in task.items(s)], task.limit)
        items += [it for it in task.items(s) if it.id in keep]
    out_dir = Path(str(cfg.runtime.output_dir)) if cfg is not None and cfg.get("runtime") else Path(".")
    path = Path(task.scores_file) if task.scores_file else out_dir / SCORES_FILE
    overwrite = bool(cfg.runtime.get("overwrite", False)) if cfg is not None and cfg.get("runtime") else False
    results = ResultsFile(path, fingerprint=_fingerprint(cfg, task) if cfg is not None else None,
                          overwrite=overwrite)
    todo = [it for it in items if not results.done(it.id)]
    resumed = len(items) - len(todo)
    progress = bool(cfg.runtime.get("progress", True)) if cfg is not None and cfg.get("runtime") else False
    done = [resumed]

    def on_batch(start: int, scores: list[list[float]]) -> None:
        chunk = todo[start:start + len(scores)]
        results.append([{"id": it.id, "subset": it.subset, "label": it.label, "step_scores": sc}
                        for it, sc in zip(chunk, scores)])
        done[0] += len(chunk)
        if progress:
            print(f"\rprocessbench: scored {done[0]}/{len(items)} solutions", end="", file=sys.stderr,
                  flush=True)

    score_given_steps(reward, [(task.prompt(task.problem_of(it)), list(it.steps)) for it in todo],
                      step=task.step, batch_size=task.batch_size, on_batch=on_batch)
    if progress and todo:
        print(file=sys.stderr)
    recs = {str(r["id"]): r for r in results.records()}
    held: dict[str, list] = {s: [] for s in task.subsets}
    evald: dict[str, dict[str, list[float]]] = {}
    for s in task.subsets:
        sub = [it for it in items if it.subset == s]
        hold = split_held_out([it.id for it in sub], task.held_out) if task.held_out > 0 else set()
        for it in sub:
            sc = [float("nan") if v is None else float(v) for v in recs[it.id]["step_scores"]]
            if it.id in hold:
                held[s].append((it.label, sc))
            else:
                evald[it.id] = sc
    if task.held_out > 0:
        threshold, held_f1 = choose_threshold(held)
    else:
        threshold, held_f1 = float(task.threshold), None
    preds = {i: predict(sc, threshold) for i, sc in evald.items()}
    res = task.metrics(preds, only=set(evald))
    res["threshold"] = threshold
    res["threshold_source"] = ("swept on held-out samples" if task.held_out > 0 else "task.threshold")
    res["held_out"] = sum(len(v) for v in held.values())
    res["held_out_avg_f1"] = held_f1
    res["evaluated"] = len(evald)
    res["resumed"] = resumed
    res["scores_file"] = str(path)
    print(format_table(res), file=sys.stderr)
    how = (f"chosen on {res['held_out']} held-out samples (avg F1 there {held_f1:.1f})"
           if held_f1 is not None else "fixed (task.threshold)")
    print(f"threshold {threshold:.4g} {how}; table over {len(evald)} other samples"
          f"{f' of a fixed sample of {task.limit} per subset' if task.limit else ''}; scores: {path}",
          file=sys.stderr)
    if task.output:
        Path(task.output).parent.mkdir(parents=True, exist_ok=True)
        Path(task.output).write_text(json.dumps(res, indent=2) + "\n")
    flat = flatten_metrics(res)
    flat.update({k: res[k] for k in ("threshold", "held_out", "held_out_avg_f1", "evaluated", "resumed")})
    return flat
