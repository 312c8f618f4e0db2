"""``lrm search``: test-time search over a task's problems, graded after the search.

    lrm search task=arith policy=hf policy.path=<dir> [reward=prm_token reward.path=<dir>] \\
        search=beam search.n=4 [search_run.split=test search_run.limit=50] [runtime.output_dir=...]

1. The problems of ``search_run.split`` (first ``search_run.limit``) are handed to the search as
   ``example.problem`` — no reference answer reaches the policy, the reward model or the search.
2. A :class:`~lrm_engine.core.engine.SearchContext` is built from the components (policy, reward,
   kernels, the task's step convention and prompt, ``search_run.max_steps`` /
   ``aggregation``; sampling = the policy's ``sampling`` options), and
   :func:`~lrm_engine.core.engine.run_search` searches in batches of ``search_run.batch_size``.
3. ``<runtime.output_dir>/results.jsonl`` gets one record per problem as each batch finishes,
   each graded by the task's grader against the example's reference *after* the search
   (``"correct"``, plus ``"reference"``). A rerun with the same output folder skips the problems
   already there (resumable).
4. A summary (accuracy; tokens computed and reused by the policy and by the PRM, summed over
   the records, resumed ones included) is printed and written to ``summary.json``.
5. ``executor=local`` (default) searches the batches in this process; ``executor=ray`` hands
   them to Ray actors that build the components from the composed config once each
   (lrm_engine/executor/); the driver alone writes results.jsonl, with the same resume and
   fingerprint, and the records are the same (per-problem seeds).
6. ``export.tree=json|html``: every record keeps its searched tree (``"tree"``: nodes with step
   text, PRM score, visits, the chosen path; lrm_engine/export/tree_json.py); ``html`` also
   writes one self-contained viewer of all the records' trees to ``export.path`` (default
   ``<runtime.output_dir>/trees.html``), ``json`` a list of the trees (default ``trees.json``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from lrm_engine.core.results import ResultsFile

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from lrm_engine.components import Components

# Defaults of the ``search_run`` config node (used when the node is absent).
SEARCH_RUN_DEFAULTS = {"split": None, "limit": None, "batch_size": 8, "max_steps": 12,
                       "aggregation": "min"}
# Defaults of the ``export`` config node (used when the node is absent).
EXPORT_DEFAULTS = {"tree": "none", "path": None}


class GradedResults(ResultsFile):
    """results.jsonl whose records are graded against the references as they are appended."""

    def __init__(self, path, examples: Mapping[str, Any], task, fingerprint=None, overwrite=False):
        super().__init__(path, fingerprint=fingerprint, overwrite=overwrite)
        self.examples = examples
        self.task = task
        # The records of the last append (graded), for per-batch metrics.
        self.last: list[dict[str, Any]] = []

    def append(self, records):
        graded = []
        for rec in records:
            ex = self.examples.get(str(rec["id"]))
            if ex is not None and "correct" not in rec:
                rec = dict(rec)
                rec["correct"] = bool(self.task.grade(ex, rec.get("solution") or ""))
                rec["reference"] = ex.reference
            graded.append(rec)
        self.last = graded
        super().append(graded)


def settings(cfg: DictConfig, default_split: str = "test") -> dict[str, Any]:
    """The ``search_run`` node; a null split is the verb's ``default_split``."""
    from omegaconf import OmegaConf

    node = cfg.get("search_run")
    out = dict(SEARCH_RUN_DEFAULTS)
    if node is not None:
        out.update(OmegaConf.to_container(node, resolve=True))
    if out["split"] is None:
        out["split"] = default_split
    return out


def model_dirs(cfg: DictConfig) -> dict[str, str | None]:
    """``{"policy.path": dir, "reward.path": dir}`` of the selected models (null: the defaults)."""
    from lrm_engine.default_models import default_model_dir

    out: dict[str, str | None] = {}
    for group, kind in (("policy", "policy"), ("reward", "prm")):
        node = cfg.get(group)
        if node is not None and "path" in node:
            out[f"{group}.path"] = str(node.path) if node.path is not None else str(default_model_dir(kind))
    return out


def export_settings(cfg: DictConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from lrm_engine.export import check_tree_export

    node = cfg.get("export")
    out = dict(EXPORT_DEFAULTS)
    if node is not None:
        out.update(OmegaConf.to_container(node, resolve=True))
    out["tree"] = check_tree_export(str(out["tree"] if out["tree"] is not None else "none"))
    return out


def write_trees(records: list[dict[str, Any]], out_dir: Path, ex: Mapping[str, Any],
                title: str = "lrm search trees") -> Path | None:
    """Write the records' trees (export.tree=html: the viewer; json: a JSON list); the path."""
    from lrm_engine.export.tree_html import trees_from_records, write_html

    if ex["tree"] == "none":
        return None
    trees = trees_from_records(records)
    if ex["tree"] == "html":
        return write_html(trees, ex["path"] or out_dir / "trees.html", title=title)
    path = Path(str(ex["path"] or out_dir / "trees.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trees, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def unavailable(cfg: DictConfig, components: Components) -> str | None:
    for kind in ("task", "policy", "search"):
        if getattr(components, kind) is None:
            return f"no {kind} selected (add {kind}=<option>)"
    if not callable(getattr(components.task, "grade", None)):
        return f"task {type(components.task).__name__} has no grader (grade(example, solution))"
    return None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and compute counters summed over the records."""
    n = len(records)
    correct = sum(1 for r in records if r.get("correct"))
    tot: dict[str, int] = {}
    for r in records:
        for k, v in (r.get("counters") or {}).items():
            if "peak" in k:
                tot[k] = max(tot.get(k, 0), int(v))
            else:
                tot[k] = tot.get(k, 0) + int(v)
    pol_c, pol_r = tot.get("policy_tokens_computed", 0), tot.get("policy_tokens_reused", 0)
    prm_c, prm_r = tot.get("reward_tokens_computed", 0), tot.get("reward_tokens_reused", 0)
    return {
        "problems": n,
        "correct": correct,
        "accuracy": correct / n if n else math.nan,
        "answered": sum(1 for r in records if r.get("answer") is not None),
        "tokens_computed": pol_c + prm_c,
        "tokens_reused": pol_r + prm_r,
        "policy_tokens_computed": pol_c,
        "policy_tokens_reused": pol_r,
        "reward_tokens_computed": prm_c,
        "reward_tokens_reused": prm_r,
        "counters": tot,
    }


def search_context(cfg: DictConfig, components: Components, s: Mapping[str, Any],
                   ex: Mapping[str, Any]):
    """The SearchContext of a search run (the policy configured with the task's step convention)."""
    from lrm_engine.core.engine import SearchContext

    task, policy = components.task, components.policy
    # The task's step convention drives the policy's stop strings and final-answer detection.
    if callable(getattr(policy, "configure", None)):
        policy.configure(step=task.step)
    elif getattr(policy, "step", None) is None:
        policy.step = task.step
    return SearchContext(
        policy=policy, step=task.step, prompt=task.prompt, reward=components.reward,
        sampling=getattr(policy, "sampling", None), ops=components.kernels,
        aggregation=s["aggregation"], max_steps=int(s["max_steps"]),
        export_trees=ex["tree"] != "none", seed=int(cfg.runtime.seed),
    )


def worker_parts(plain_cfg: dict[str, Any]):
    """What a remote worker searches with: the components built from the composed config (a
    plain dict, as shipped to Ray actors) and their SearchContext."""
    from omegaconf import OmegaConf

    from lrm_engine.components import build
    from lrm_engine.executor.search_work import SearchParts

    cfg = OmegaConf.create(plain_cfg)
    components = build(cfg)
    return SearchParts(search=components.search,
                       ctx=search_context(cfg, components, settings(cfg), export_settings(cfg)))


def search_work(cfg: DictConfig, executor: Any, parts: Any):
    """The executor's work: the driver's own parts in-process, a config to build from remotely."""
    from functools import partial

    from omegaconf import OmegaConf

    from lrm_engine.executor.search_work import SearchWork

    if not executor.remote:
        return SearchWork(parts=parts)
    return SearchWork(build=partial(worker_parts, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)))


def main(cfg: DictConfig, components: Components) -> Mapping[str, Any]:
    from lrm_engine.core.engine import check_reward_fits
    from lrm_engine.executor import make_executor
    from lrm_engine.executor.search_work import SearchParts
    from lrm_engine.fingerprint import fingerprint
    from lrm_engine.leakage import check_models
    from lrm_engine.plugin_manager import get_plugin_manager

    task, reward, search = components.task, components.reward, components.search
    s = settings(cfg)
    ex = export_settings(cfg)
    examples = list(task.examples(s["split"]))
    if s["limit"] is not None:
        examples = examples[: int(s["limit"])]
    by_id = {str(ex.problem.id): ex for ex in examples}
    check_models(model_dirs(cfg), str(cfg.task.name) if cfg.get("task") is not None else "task",
                 s["split"], by_id)
    ctx = search_context(cfg, components, s, ex)
    check_reward_fits(search, reward)  # before any worker starts
    out_dir = Path(str(cfg.runtime.output_dir))
    results = GradedResults(out_dir / "results.jsonl", by_id, task, fingerprint=fingerprint(cfg, "search", {"search_run.split": s["split"]}),
                            overwrite=bool(cfg.runtime.get("overwrite", False)))
    resumed = sum(1 for i in by_id if results.done(i))
    todo = [e.problem for e in examples if not results.done(e.problem.id)]
    pm = get_plugin_manager()
    it = [0]

    def sink(res):  # the driver alone writes, each batch as it arrives
        results.append(res.items)
        recs = results.last
        acc = sum(bool(r.get("correct")) for r in recs) / max(len(recs), 1)
        pm.hook.lrm_iteration_end(iteration=it[0], metrics={"accuracy": acc, "problems": len(recs)})
        it[0] += 1

    progress = bool(cfg.runtime.get("progress", True)) if cfg.get("runtime") is not None else True
    t0 = time.perf_counter()
    with make_executor(cfg) as executor:
        report = executor.run(search_work(cfg, executor, SearchParts(search, ctx)), todo, sink,
                              batch_size=int(s["batch_size"]), progress=progress, desc="search")
    wall = time.perf_counter() - t0
    records = [r for r in results.records() if str(r["id"]) in by_id]
    summary = summarize(records)
    summary.update({
        "task": cfg.task.name if cfg.get("task") is not None else type(task).__name__,
        "split": s["split"],
        "search": cfg.search.name if cfg.get("search") is not None else type(search).__name__,
        "reward": cfg.reward.name if cfg.get("reward") is not None else None,
        "resumed": resumed,
        "wall_s": round(wall, 3),
        "timings_s": {k: round(v, 3) for k, v in report.timings.items()},
        "executor": executor_summary(report),
        "results": str(out_dir / "results.jsonl"),
    })
    trees = write_trees(records, out_dir, ex, title=f"lrm search: {summary['search']} on {summary['task']}")
    if trees is not None:
        summary["trees"] = str(trees)
    notes = run_notes(summary["counters"], results.bad_lines)
    if notes:
        summary["notes"] = notes
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    where = "" if report.executor == "local" else f" on {report.executor} ({report.workers} workers, {report.restarts} restarts)"
    print(
        f"lrm search: {summary['correct']}/{summary['problems']} correct "
        f"(accuracy {summary['accuracy']:.3f}); tokens computed {summary['tokens_computed']} "
        f"(policy {summary['policy_tokens_computed']}, PRM {summary['reward_tokens_computed']}), "
        f"reused {summary['tokens_reused']} (policy {summary['policy_tokens_reused']}, "
        f"PRM {summary['reward_tokens_reused']}); {resumed} resumed; {wall:.1f}s{where} -> {out_dir}"
    )
    for note in notes:
        print(f"lrm search: note: {note}")
    return summary


def executor_summary(report: Any) -> dict[str, Any]:
    """Where the batches ran: executor, workers started, restarts, batches, problems."""
    return {"name": report.executor, "workers": report.workers, "restarts": report.restarts,
            "retried_batches": report.retried_batches, "batches": report.batches,
            "problems": report.problems}


def run_notes(counters: Mapping[str, int], bad_lines: int = 0) -> list[str]:
    """One line per thing that went differently from a plain run, from the counters."""
    c = counters
    notes = []
    for who in ("policy", "reward"):
        n = c.get(f"{who}_budget_overruns", 0)
        if n:
            peak = c.get(f"{who}_bytes_resident_peak", 0) / 2**20
            notes.append(f"the {who}'s pinned KV segments exceeded {who}.kv_budget_mb {n} time(s) "
                         f"(peak {peak:.1f} MiB): raise it or lower search_run.batch_size")
    if c.get("policy_context_stops"):
        notes.append(f"{c['policy_context_stops']} step(s) were cut where the path filled the "
                     f"model's context (those paths end unanswered)")
    if c.get("policy_empty_steps"):
        notes.append(f"{c['policy_empty_steps']} empty step(s) ended their paths")
    if c.get("reward_nonfinite_scores"):
        notes.append(f"{c['reward_nonfinite_scores']} non-finite step score(s) from the reward "
                     f"model were counted as 0.0")
    if c.get("reward_judge_unparseable"):
        notes.append(f"{c['reward_judge_unparseable']} of {c.get('reward_judge_judged', 0)} judge "
                     f"verdicts were unparseable (scored neutral)")
    if bad_lines:
        notes.append(f"{bad_lines} unreadable line(s) of results.jsonl were moved to results.jsonl.bad")
    return notes
