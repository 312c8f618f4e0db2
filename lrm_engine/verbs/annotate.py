"""``lrm annotate``: process labels for a task's problems, written as a TRL PRM dataset.

    lrm annotate task=arith policy=hf [policy.path=<dir>] annotate=mc_rollout \\
        annotate.num_rollouts=8 [search_run.split=train search_run.limit=200]

The annotator (e.g. ``mc_rollout``, Math-Shepherd) samples solutions with the policy through
the tree engine and grades completions against the references (annotation may see them; search
never does). Records ``{"prompt", "completions", "labels", "soft_labels", "id", ...}`` are appended
to ``<runtime.output_dir>/prm.jsonl`` batch by batch; a rerun with the same folder skips the
problems already labelled (resumable). ``search_run`` gives the split, the limit, the batch size
and the step limit (shared with ``lrm search``).
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


def main(cfg: DictConfig, components: Components) -> Mapping[str, Any]:
    from lrm_engine.core.engine import SearchContext
    from lrm_engine.core.results import ResultsFile
    from lrm_engine.verbs.search import settings

    task, policy, annotator = components.task, components.policy, components.annotator
    s = settings(cfg)
    split = s["split"] if cfg.get("search_run") is not None and "split" in cfg.search_run else "train"
    examples = list(task.examples(split))
    if s["limit"] is not None:
        examples = examples[: int(s["limit"])]
    if callable(getattr(policy, "configure", None)):
        policy.configure(step=task.step)
    ctx = SearchContext(policy=policy, step=task.step, prompt=task.prompt,
                        sampling=getattr(policy, "sampling", None), ops=components.kernels,
                        max_steps=int(s["max_steps"]))
    out_dir = Path(str(cfg.runtime.output_dir))
    out = ResultsFile(out_dir / "prm.jsonl")
    t0 = time.perf_counter()
    recs = annotator.annotate(ctx, examples, task.grade, out, batch_size=int(s["batch_size"]),
                              progress=bool(cfg.runtime.get("progress", True)))
    steps = sum(len(r["labels"]) for r in recs)
    summary = {
        "records": len(recs),
        "steps": steps,
        "positive_steps": int(sum(sum(r["labels"]) for r in recs)),
        "policy_tokens": ctx.counters(),
        "tokens_per_labelled_step": (ctx.counters().get("policy_tokens_computed", 0) / steps) if steps else None,
        "wall_s": round(time.perf_counter() - t0, 2),
        "output": str(out_dir / "prm.jsonl"),
    }
    (out_dir / "annotate_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
