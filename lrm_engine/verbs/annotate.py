"""``lrm annotate``: process labels, preference pairs or SFT trajectories for a task's problems.

    lrm annotate task=arith policy=hf [policy.path=<dir>] annotate=mc_rollout \\
        annotate.num_rollouts=8 [search_run.split=train search_run.limit=200]

The annotator (e.g. ``mc_rollout``, Math-Shepherd) samples solutions with the policy through
the tree engine and grades completions against the references (annotation may see them; search
never does). Records ``{"prompt", "completions", "labels", "soft_labels", "id", ...}`` are appended
to ``<runtime.output_dir>/prm.jsonl`` batch by batch; a rerun with the same folder skips the
problems already labelled (resumable). ``search_run`` gives the split, the limit, the batch size
and the step limit (shared with ``lrm search``).

The annotator picks the output (``output_format`` / ``open_output``): PRM ``prm.jsonl``
(mc_rollout, omegaprm, judge), DPO ``pairs.jsonl`` (pairs), SFT ``journey.jsonl`` (journey); the
grouped writers keep a ledger ``<file>.done`` of finished problems (exactly once after a kill).
``annotate.input_file=<jsonl>`` (annotators that have it) reads problems from a file instead of
the task split; malformed lines are counted and skipped. The summary reloads the file with its
format's loader and reports valid / skipped lines.

``executor=ray`` hands the batches to Ray actors that build the policy and annotator from the
composed config once each (lrm_engine/executor/); the driver replays each batch's writes on the
output, so resume, ledger and fingerprint are those of ``executor=local`` (the default).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from lrm_engine.components import Components


def unavailable(cfg: DictConfig, components: Components) -> str | None:
    for kind in ("task", "policy", "annotator"):
        if getattr(components, kind) is None:
            group = "annotate" if kind == "annotator" else kind
            return f"no {kind} selected (add {group}=<option>)"
    if not callable(getattr(components.task, "grade", None)):
        return f"task {type(components.task).__name__} has no grader (grade(example, solution))"
    return None


def annotate_context(cfg: DictConfig, components: Components, s: Mapping[str, Any]):
    """The SearchContext the annotator samples through (the policy given the task's steps)."""
    from lrm_engine.core.engine import SearchContext

    task, policy = components.task, components.policy
    if callable(getattr(policy, "configure", None)):
        policy.configure(step=task.step)
    return SearchContext(policy=policy, step=task.step, prompt=task.prompt,
                         sampling=getattr(policy, "sampling", None), ops=components.kernels,
                         max_steps=int(s["max_steps"]), seed=int(cfg.runtime.seed))


def annotate_parts(components: Components, ctx: Any):
    """The annotator, its context, the grader and (mc_rollout) its completer, loaded once."""
    from lrm_engine.executor.annotate_work import AnnotateParts

    annotator = components.annotator
    completer = None
    if getattr(annotator, "completer", None) and callable(getattr(annotator, "load_completer", None)):
        completer = annotator.load_completer(ctx)
    return AnnotateParts(annotator=annotator, ctx=ctx, grade=components.task.grade, completer=completer)


def worker_parts(plain_cfg: dict[str, Any]):
    """What a remote worker annotates with, built from the composed config (a plain dict)."""
    from omegaconf import OmegaConf

    from lrm_engine.components import build
    from lrm_engine.verbs.search import settings

    cfg = OmegaConf.create(plain_cfg)
    components = build(cfg)
    return annotate_parts(components, annotate_context(cfg, components, settings(cfg, default_split="train")))


def main(cfg: DictConfig, components: Components) -> Mapping[str, Any]:
    from functools import partial

    from omegaconf import OmegaConf

    from lrm_engine.core.results import ResultsFile, claim
    from lrm_engine.executor import make_executor
    from lrm_engine.executor.annotate_work import AnnotateWork, replay
    from lrm_engine.fingerprint import fingerprint
    from lrm_engine.verbs.search import executor_summary, settings

    task, annotator = components.task, components.annotator
    s = settings(cfg, default_split="train")
    split = s["split"]
    input_errors: list[str] = []
    input_file = getattr(annotator, "input_file", None)
    if input_file:  # problems from a JSONL file instead of the task's split (malformed lines counted)
        examples, input_errors = annotator.read_input()
    else:
        examples = list(task.examples(split))
    if s["limit"] is not None:
        examples = examples[: int(s["limit"])]
    out_dir = Path(str(cfg.runtime.output_dir))
    # The annotator picks its output: PRM (prm.jsonl), DPO (pairs.jsonl) or SFT (journey.jsonl).
    fmt = str(getattr(annotator, "output_format", "prm"))
    # Results of another configuration are never resumed (lrm_engine/fingerprint.py).
    fp = fingerprint(cfg, "annotate", {"search_run.split": split})
    overwrite = bool(cfg.runtime.get("overwrite", False))
    if callable(getattr(annotator, "open_output", None)):
        claim(out_dir / str(annotator.output_file), fp, overwrite,
              companions=(".bad", ".done", ".done.bad"))
        out = annotator.open_output(out_dir)
    else:
        out = ResultsFile(out_dir / "prm.jsonl", fingerprint=fp, overwrite=overwrite)
    todo = [ex for ex in examples if not out.done(ex.problem.id)]
    t0 = time.perf_counter()
    with make_executor(cfg) as executor:
        if executor.remote:
            plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
            work = AnnotateWork(type(out), build=partial(worker_parts, plain))
        else:
            work = AnnotateWork(type(out), parts=annotate_parts(components, annotate_context(cfg, components, s)))
        report = executor.run(work, todo, lambda res: replay(out, res.items), batch_size=int(s["batch_size"]),
                              progress=bool(cfg.runtime.get("progress", True)),
                              desc=f"annotate {getattr(annotator, 'name', '')}".strip())
    recs = out.records()
    counters = report.counters.get("policy", {})
    summary: dict[str, Any] = {"records": len(recs), "format": fmt}
    if fmt == "prm":
        steps = sum(len(r["labels"]) for r in recs)
        summary.update(
            steps=steps,
            positive_steps=int(sum(sum(float(x) > 0.5 for x in r["labels"]) for r in recs)),
            tokens_per_labelled_step=(counters.get("policy_tokens_computed", 0) / steps) if steps else None,
        )
    summary.update(
        policy_tokens=counters,
        wall_s=round(time.perf_counter() - t0, 2),
        output=str(out.path),
        executor=executor_summary(report),
    )
    stats = getattr(annotator, "stats", None)
    if stats is not None and executor.remote:  # the workers counted; the driver sums their counts
        for k, v in report.stats.items():
            stats[k] = stats.get(k, 0) + v
    if stats is not None:
        summary["counts"] = dict(stats)
    if input_file:
        summary["malformed_input_lines"] = len(input_errors)
    summary["validation"] = validate_output(fmt, out.path)
    (out_dir / "annotate_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def validate_output(fmt: str, path: Path) -> dict[str, Any]:
    """Load the written file back with the loader of its format: valid and skipped lines."""
    if not Path(path).exists():
        return {"valid": 0, "skipped": 0}
    if fmt == "prm":
        from lrm_engine.train.prm_data import load_prm_jsonl as load
    elif fmt == "dpo":
        from lrm_engine.train.pref_data import load_pref_jsonl as load
    elif fmt == "sft":
        from lrm_engine.train.sft_data import load_sft_jsonl as load
    else:
        return {"unknown_format": fmt}
    rep = load(path)
    return {"valid": len(rep.records), "skipped": rep.skipped, "errors": rep.errors[:5]}
