"""ProcessBench (Zheng et al., 2024): find the earliest wrong step of a solution.

Data: ``<path>/<subset>.json`` for subsets gsm8k, math, olympiadbench, omnimath; each a JSON
array of ``{"id", "generator", "problem", "steps": [str], "final_answer_correct", "label"}``
where ``label`` is the 0-based index of the earliest erroneous step, or -1 if every step is
correct.

Predictions (``task.predictions=<file>``): JSON Lines, one object per sample::

    {"id": "gsm8k-0", "prediction": 2}        # index of the earliest wrong step, -1 = none
    {"id": "math-7", "step_scores": [0.9, 0.8, 0.2, 0.7]}   # per-step PRM scores

With ``step_scores`` the prediction is the first step whose score is below ``threshold``
(-1 if none), as the paper does for PRMs. Ids are the dataset's (unique across subsets).

From a reward model (``lrm evaluate task=processbench reward=<prm> ...``): every step is scored
by the reward, the threshold is chosen on a held-out share (``held_out``) or fixed
(``threshold``), and the same table is printed (:mod:`lrm_engine.processbench_eval`).

Metrics, as in the paper (in percent): for each subset, *error accuracy* = share of erroneous
samples (label != -1) whose prediction equals the label; *correct accuracy* = share of correct
samples (label == -1) predicted -1; *F1* = their harmonic mean (0 when both are 0). Overall:
``avg_f1`` is the mean of the subsets' F1 (the paper's "Avg." column); ``error_acc``,
``correct_acc`` and ``f1`` are also given pooled over every sample of the evaluated subsets.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Sequence

from lrm_engine.config import TaskConfig
from lrm_engine.errors import UserError
from lrm_engine.core.interfaces import Example, Problem, StepConvention

from ._data import (DataError, DataNotFoundError, JsonlStats, PromptMixin, read_jsonl, require_file,
                    resolve_task_dir, skip_line)

log = logging.getLogger("lrm_engine.tasks")

SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")


class TaskOptionError(UserError, ValueError):
    """A bad task option (printed by ``lrm`` as one line naming the field, exit 2)."""


@dataclass
class ProcessBenchTaskConfig(TaskConfig):
    # Registry name of the task.
    name: str = "processbench"
    # Folder holding gsm8k.json, math.json, olympiadbench.json, omnimath.json; null =
    # $LRM_DATA/processbench, else the nearest shared/data/processbench found upward.
    path: Optional[str] = None
    # The subsets to load and evaluate.
    subsets: List[str] = field(default_factory=lambda: list(SUBSETS))
    # JSON Lines of per-sample predictions to evaluate (see docs/tasks.md); needed by evaluate.
    predictions: Optional[str] = None
    # A step whose score is below this is predicted wrong (for "step_scores" predictions).
    threshold: float = 0.5
    # What a sample without a prediction does: "error" (fail, naming it) or "wrong" (counts
    # as an incorrect prediction).
    on_missing: str = "error"
    # Write the metrics as JSON to this file too (null = print only).
    output: Optional[str] = None
    # The string that joins steps when a solution is rendered as text.
    delimiter: str = "\n\n"
    # Prompt text for a critic model; {question} is replaced by the problem.
    prompt_template: str = "{question}\n"
    # With a reward model: score a fixed sample of this many per subset (the ids whose sha256
    # sorts first; null: all).
    limit: Optional[int] = None
    # With a reward model: share of each subset's scored samples held out to choose the
    # threshold (swept, best mean F1 there); the table covers the rest. 0: use `threshold`.
    held_out: float = 0.25
    # With a reward model: solutions scored per tree batch.
    batch_size: int = 8
    # With a reward model: the resumable per-solution step scores (JSONL); null =
    # <runtime.output_dir>/processbench_scores.jsonl.
    scores_file: Optional[str] = None


@dataclass(frozen=True)
class ProcessBenchItem:
    id: str
    subset: str
    problem: str
    steps: tuple[str, ...]
    label: int
    final_answer_correct: bool
    generator: str = ""


def f1_score(error_acc: float, correct_acc: float) -> float:
    """Harmonic mean of the two accuracies (any scale); 0 when both are 0."""
    s = error_acc + correct_acc
    return 0.0 if s == 0 else 2 * error_acc * correct_acc / s


def prediction_from_scores(scores: Sequence[float], threshold: float) -> int:
    """The first step scored below ``threshold``, or -1."""
    for i, s in enumerate(scores):
        if s < threshold:
            return i
    return -1


def compute_metrics(pairs: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Metrics of ``(label, prediction)`` pairs, accuracies in percent."""
    err = [(l, p) for l, p in pairs if l != -1]
    cor = [(l, p) for l, p in pairs if l == -1]
    ea = 100.0 * sum(l == p for l, p in err) / len(err) if err else 0.0
    ca = 100.0 * sum(p == -1 for _, p in cor) / len(cor) if cor else 0.0
    return {"error_acc": ea, "correct_acc": ca, "f1": f1_score(ea, ca), "n_error": len(err), "n_correct": len(cor)}


class ProcessBenchTask(PromptMixin):
    """ProcessBench as a task: items to judge, and the evaluator of per-sample predictions.

    As a :class:`Task`, ``examples(subset)`` yields one Example per sample: the problem's
    ``meta["steps"]`` holds the solution steps to judge (safe to show: the label is not there),
    ``reference`` is the label as text; ``grade(example, prediction_text)`` is whether a
    predicted index equals the label.
    """

    name = "processbench"

    def __init__(
        self,
        *,
        path: str | None = None,
        subsets: Sequence[str] = SUBSETS,
        predictions: str | None = None,
        threshold: float = 0.5,
        on_missing: str = "error",
        output: str | None = None,
        delimiter: str = "\n\n",
        prompt_template: str = "{question}\n",
        limit: int | None = None,
        held_out: float = 0.25,
        batch_size: int = 8,
        scores_file: str | None = None,
    ):
        self.path = path
        self.subsets = tuple(subsets)
        bad = [s for s in self.subsets if s not in SUBSETS]
        if bad:
            raise ValueError(f"processbench: unknown subset(s) {bad}; subsets are {list(SUBSETS)}")
        if on_missing not in ("error", "wrong"):
            raise ValueError("processbench: on_missing must be 'error' or 'wrong'")
        self.predictions, self.threshold, self.on_missing, self.output = predictions, threshold, on_missing, output
        if limit is not None and limit < 1:
            raise TaskOptionError(f"task.limit={limit}: must be >= 1, or null for every sample")
        if not 0.0 <= held_out < 1.0:
            raise TaskOptionError(f"task.held_out={held_out}: must be in [0, 1) (0: use task.threshold)")
        if batch_size < 1:
            raise TaskOptionError(f"task.batch_size={batch_size}: must be >= 1")
        self.limit, self.held_out, self.batch_size, self.scores_file = limit, float(held_out), batch_size, scores_file
        self.prompt_style, self.prompt_template, self.system_prompt = "plain", prompt_template, ""
        self.step = StepConvention(delimiter=delimiter, answer_prefix="")
        self._cache: dict[str, list[ProcessBenchItem]] = {}
        self.prediction_stats = JsonlStats()

    @property
    def skipped_lines(self) -> int:
        """Malformed lines skipped in the predictions file (each logged with its line)."""
        return self.prediction_stats.skipped_lines

    @property
    def data_dir(self) -> Path:
        return resolve_task_dir(self.path, "processbench")

    def items(self, subset: str) -> list[ProcessBenchItem]:
        if subset not in SUBSETS:
            raise ValueError(f"processbench: unknown subset {subset!r}; subsets are {list(SUBSETS)}")
        if subset not in self._cache:
            file = require_file(self.data_dir / f"{subset}.json", task="processbench", folder="processbench")
            try:
                raw = json.loads(file.read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                why = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
                raise DataError(f"processbench: {file} is not a JSON file ({why}); restore it from the "
                                f"ProcessBench release") from None
            self._cache[subset] = [
                ProcessBenchItem(
                    id=str(r["id"]), subset=subset, problem=r["problem"], steps=tuple(r["steps"]),
                    label=int(r["label"]), final_answer_correct=bool(r["final_answer_correct"]),
                    generator=r.get("generator", ""),
                )
                for r in raw
            ]
        return self._cache[subset]

    def all_items(self) -> list[ProcessBenchItem]:
        return [it for s in self.subsets for it in self.items(s)]

    # -- Task protocol ---------------------------------------------------------------------
    def examples(self, split: str = "test") -> Iterator[Example]:
        """``split``: a subset name, or "test" for every configured subset."""
        items = self.all_items() if split == "test" else self.items(split)
        for it in items:
            yield Example(
                problem=Problem(id=it.id, question=it.problem,
                                meta={"subset": it.subset, "steps": it.steps, "generator": it.generator}),
                reference=str(it.label),
            )

    @staticmethod
    def problem_of(it: ProcessBenchItem) -> Problem:
        """The sample's problem (what a critic's prompt shows; the label is not in it)."""
        return Problem(id=it.id, question=it.problem, meta={"subset": it.subset})

    def grade(self, example: Example, solution: str) -> bool:
        try:
            return int(solution.strip()) == int(example.reference)
        except ValueError:
            return False

    # -- evaluation -------------------------------------------------------------------------
    def read_predictions(self, file: str | Path) -> dict[str, int]:
        file = Path(file)
        if not file.is_file():
            raise DataNotFoundError(
                f"processbench: predictions file not found: {file}. Set task.predictions=<JSONL "
                f'file of {{"id": ..., "prediction": <index or -1>}}>'
            )
        self.prediction_stats = JsonlStats()
        out: dict[str, int] = {}
        for lineno, rec in read_jsonl(file, self.prediction_stats, ("id",)):
            try:
                if "prediction" in rec:
                    p = rec["prediction"]
                    if isinstance(p, bool) or not isinstance(p, int):
                        raise ValueError(f"prediction must be an integer, got {p!r}")
                elif "step_scores" in rec:
                    p = prediction_from_scores([float(s) for s in rec["step_scores"]], self.threshold)
                else:
                    raise ValueError("needs 'prediction' or 'step_scores'")
            except (TypeError, ValueError) as e:
                skip_line(self.prediction_stats, file, lineno, e)
                continue
            if str(rec["id"]) in out:
                log.warning("%s:%d: duplicate id %s (the last one counts)", file, lineno, rec["id"])
            out[str(rec["id"])] = int(p)
        return out

    def metrics(self, predictions: Mapping[str, int], only: set[str] | None = None) -> dict[str, Any]:
        """Per-subset and overall metrics of ``{id: predicted index}`` (over the samples whose id
        is in ``only`` when given)."""
        per: dict[str, Any] = {}
        pooled: list[tuple[int, int]] = []
        missing: list[str] = []
        for s in self.subsets:
            pairs = []
            for it in self.items(s):
                if only is not None and it.id not in only:
                    continue
                if it.id in predictions:
                    p = predictions[it.id]
                else:
                    missing.append(it.id)
                    p = -2  # never equals a label: counts as wrong
                pairs.append((it.label, p))
            per[s] = compute_metrics(pairs)
            pooled += pairs
        if missing and self.on_missing == "error":
            raise ValueError(
                f"processbench: {len(missing)} sample(s) have no prediction (first: "
                f"{', '.join(missing[:5])}). Predict every sample, limit task.subsets, or set "
                f"task.on_missing=wrong."
            )
        known = {it.id for s in self.subsets for it in self.items(s)}
        unknown = [k for k in predictions if k not in known]
        overall = compute_metrics(pooled)
        overall["avg_f1"] = sum(per[s]["f1"] for s in self.subsets) / len(self.subsets)
        return {
            "subsets": per,
            "overall": overall,
            "missing": len(missing),
            "unknown_ids": len(unknown),
            "skipped_lines": self.skipped_lines,
        }

    def evaluate_with_reward(self, cfg: Any, reward: Any) -> dict[str, float]:
        """Predictions from a reward model's step scores (lrm_engine/processbench_eval.py)."""
        from lrm_engine.processbench_eval import evaluate_reward

        return evaluate_reward(self, cfg, reward)

    def evaluate(self, cfg: Any = None) -> dict[str, float]:
        """Read ``task.predictions``; print the metrics table (stderr); return flat metrics.

        Keys: ``avg_f1`` (the paper's Avg.), ``<subset>/<metric>`` and ``pooled/<metric>`` for
        metric in error_acc, correct_acc, f1, n_error, n_correct; ``missing``, ``unknown_ids``,
        ``skipped_lines``. ``task.output`` (if set) receives the nested form as JSON.
        """
        file = self.predictions
        if file is None and cfg is not None:
            file = _get(cfg, "task", "predictions")
        if not file:
            raise ValueError("processbench: set task.predictions=<JSONL file of per-sample predictions>")
        res = self.metrics(self.read_predictions(file))
        print(format_table(res), file=sys.stderr)
        if self.output:
            Path(self.output).parent.mkdir(parents=True, exist_ok=True)
            Path(self.output).write_text(json.dumps(res, indent=2) + "\n")
        return flatten_metrics(res)


def flatten_metrics(res: Mapping[str, Any]) -> dict[str, float]:
    """The nested result of :meth:`ProcessBenchTask.metrics` as ``{"gsm8k/f1": ..., ...}``."""
    flat: dict[str, float] = {"avg_f1": res["overall"]["avg_f1"]}
    for s, m in res["subsets"].items():
        flat.update({f"{s}/{k}": v for k, v in m.items()})
    flat.update({f"pooled/{k}": v for k, v in res["overall"].items() if k != "avg_f1"})
    flat.update({k: res[k] for k in ("missing", "unknown_ids", "skipped_lines")})
    return flat


def _get(cfg: Any, *keys: str) -> Any:
    for k in keys:
        if cfg is None:
            return None
        cfg = cfg.get(k) if hasattr(cfg, "get") else getattr(cfg, k, None)
    return cfg


def format_table(res: Mapping[str, Any]) -> str:
    lines = [f"{'subset':<14} {'n_err':>6} {'n_cor':>6} {'err_acc':>8} {'cor_acc':>8} {'F1':>7}"]
    for s, m in res["subsets"].items():
        lines.append(f"{s:<14} {m['n_error']:>6} {m['n_correct']:>6} {m['error_acc']:>8.1f} "
                     f"{m['correct_acc']:>8.1f} {m['f1']:>7.1f}")
    o = res["overall"]
    lines.append(f"{'pooled':<14} {o['n_error']:>6} {o['n_correct']:>6} {o['error_acc']:>8.1f} "
                 f"{o['correct_acc']:>8.1f} {o['f1']:>7.1f}")
    lines.append(f"{'avg F1 (paper)':<14} {'':>6} {'':>6} {'':>8} {'':>8} {o['avg_f1']:>7.1f}")
    extra = [f"{k}={res[k]}" for k in ("missing", "unknown_ids", "skipped_lines") if res.get(k)]
    if extra:
        lines.append("; ".join(extra))
    return "\n".join(lines)
