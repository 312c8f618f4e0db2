"""ORM data: graded solutions in TRL's prompt/completion/label format, and their training units.

Record format (one JSON object per line; TRL's "unpaired preference" format, the one its KTO and
reward-modelling examples read)::

    {"prompt": "((12+7)*3)-15=\\n", "completion": "12+7=19\\n19*3=57\\n57-15=42\\nAnswer: 42\\n",
     "label": true}

- ``prompt``: a string; ``completion``: the solution text (steps joined by the task's step
  delimiter); ``label``: a bool (the final answer is correct) or a number in [0, 1].

Other keys go to :attr:`ORMRecord.meta` (``id`` names the problem, ``problem_id`` or the part of
``id`` before a ``#``: the leakage guard reads it). Malformed lines are reported ``file:line:
reason`` and skipped, as for PRM data.

Producing it from ``lrm search`` (:func:`orm_records_from_results`): each record of a search's
``results.jsonl`` holds the problem ``id`` and its ``candidates`` (every finished solution the
search kept, with its ``text``); each distinct candidate text is graded by the task's grader
against the problem's reference, giving one ORM record per solution::

    lrm search task=arith_hard policy=tree search=best_of_n search.n=8 search_run.split=train \\
        search_run.limit=200 runtime.output_dir=runs/orm_src
    python -c "from lrm_engine.train.orm_data import results_to_orm_jsonl as f; \\
        f('runs/orm_src/results.jsonl', 'orm.jsonl', task='arith_hard', split='train')"
    lrm train objective=orm task=arith_hard objective.data=orm.jsonl

Units (:class:`ORMDataset`): the completion is split into steps at the step delimiter and laid
out as PRM data (``<bos> prompt (step TAG)*``, :func:`~lrm_engine.train.prm_data.tokenize_prm`);
only the final step's TAG keeps a label. A solution whose final TAG does not fit in
``max_length`` is dropped (counted): a label on a cut solution would sit on a step that is not
its last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .jsonl import JSONLLoadReport, load_jsonl_records, write_jsonl_records
from .prm_data import PRMDataset, PRMRecord

REQUIRED_KEYS = ("prompt", "completion", "label")


class ORMRecordError(ValueError):
    """A record that does not follow the ORM format (the message says why)."""


@dataclass(frozen=True)
class ORMRecord:
    """One graded solution."""

    prompt: str
    completion: str
    # 1.0 = correct (a soft label in [0, 1] is allowed).
    label: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.meta.items() if k not in REQUIRED_KEYS}
        out.update(prompt=self.prompt, completion=self.completion,
                   label=bool(self.label) if self.label in (0.0, 1.0) else self.label)
        return out

    def to_prm_record(self, delimiter: str) -> PRMRecord:
        """The completion's steps (split at ``delimiter``), each carrying the solution's label
        (:class:`ORMDataset` keeps only the final one's)."""
        steps = [s for s in self.completion.split(delimiter) if s.strip()]
        if not steps:
            raise ORMRecordError("the completion has no step")
        return PRMRecord(self.prompt, tuple(steps), (self.label,) * len(steps), dict(self.meta))


def validate_orm_record(obj: Any) -> ORMRecord:
    """An :class:`ORMRecord` from a parsed JSON object; :class:`ORMRecordError` if malformed."""
    if not isinstance(obj, Mapping):
        raise ORMRecordError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ORMRecordError(f"missing key(s) {missing}")
    for k in ("prompt", "completion"):
        if not isinstance(obj[k], str):
            raise ORMRecordError(f"'{k}' must be a string, got {type(obj[k]).__name__}")
    if not obj["completion"].strip():
        raise ORMRecordError("'completion' is empty")
    v = obj["label"]
    if isinstance(v, bool):
        label = 1.0 if v else 0.0
    elif isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0:
        label = float(v)
    else:
        raise ORMRecordError(f"'label' must be a bool or a number in [0, 1], got {v!r}")
    return ORMRecord(obj["prompt"], obj["completion"], label,
                     {k: x for k, x in obj.items() if k not in REQUIRED_KEYS})


class ORMLoadReport(JSONLLoadReport):
    """What :func:`load_orm_jsonl` read (``records``: :class:`ORMRecord`)."""

    records: list[ORMRecord]


def load_orm_jsonl(path: str | Path, *, limit: int | None = None, max_logged: int = 20) -> ORMLoadReport:
    """Read an ORM JSONL file; malformed lines are reported (``file:line: reason``) and skipped."""
    return load_jsonl_records(path, validate_orm_record, ORMLoadReport, record_error=ORMRecordError,
                              what="ORM data", limit=limit, max_logged=max_logged)


def write_orm_jsonl(path: str | Path, records: Iterable[ORMRecord]) -> int:
    """Write records as ORM JSONL (atomically); returns the count."""
    return write_jsonl_records(path, records)


# --------------------------------------------------------------------------- sources


def oracle_orm_records(task, split: str = "train", *, limit: int | None = None,
                       noise_fraction: float = 0.5, noise_seed: int = 0) -> list[ORMRecord]:
    """Graded solutions from a task with a noise injector: its (noisy) solutions, each labelled
    by the task's grader (a testing aid, named "oracle" like the PRM's)."""
    if not callable(getattr(task, "noisy_solutions", None)):
        raise ValueError(f"oracle ORM data needs a task with a noise injector (noisy_solutions() "
                         f"missing on task {getattr(task, 'name', task)!r}); give an ORM JSONL file")
    out = []
    for s in task.noisy_solutions(split, fraction=noise_fraction, seed=noise_seed, limit=limit):
        text = task.step.join_steps(s.steps)
        out.append(ORMRecord(task.prompt(s.example.problem), text,
                             1.0 if task.grade(s.example, text) else 0.0,
                             {"id": s.example.problem.id, "label_source": "oracle"}))
    return out


def orm_records_from_results(results: str | Path, task, split: str = "train") -> list[ORMRecord]:
    """One ORM record per distinct finished solution of an ``lrm search`` results.jsonl
    (its ``candidates``, else the chosen ``solution``), graded by ``task`` against the
    reference of the problem (looked up by ``id`` in ``split``); ids ``<problem id>#<j>``."""
    from ..core.results import scan_jsonl

    examples = {ex.problem.id: ex for ex in task.examples(split)}
    out = []
    for rec in scan_jsonl(Path(results)).records:
        ex = examples.get(str(rec["id"]))
        if ex is None:
            raise ValueError(f"{results}: problem {rec['id']!r} is not in split {split!r} of "
                             f"task {getattr(task, 'name', task)!r}")
        texts = [c.get("text") for c in rec.get("candidates") or []] or [rec.get("solution")]
        for j, text in enumerate(dict.fromkeys(t for t in texts if t and t.strip())):
            out.append(ORMRecord(task.prompt(ex.problem), text, 1.0 if task.grade(ex, text) else 0.0,
                                 {"id": f"{ex.problem.id}#{j}", "label_source": "task grader"}))
    return out


def results_to_orm_jsonl(results: str | Path, out: str | Path, *, task: str | Any, split: str = "train") -> int:
    """Write :func:`orm_records_from_results` to ``out`` (``task``: a Task, or a task config
    option such as ``"arith_hard"``, composed and built as ``lrm`` would); returns the count."""
    if isinstance(task, str):
        from ..components import build
        from ..composition import compose

        task = build(compose([f"task={task}"])).task
    return write_orm_jsonl(out, orm_records_from_results(results, task, split))


# --------------------------------------------------------------------------- units


class ORMDataset(PRMDataset):
    """PRM units of ORM records (given as :meth:`ORMRecord.to_prm_record`) keeping only the
    final step's tag; a unit whose final tag was cut by ``max_length`` is dropped (counted)."""

    def __init__(self, records: Sequence[PRMRecord], tokenizer, step_tag: str = "\n", max_length: int = 256):
        super().__init__(records, tokenizer, step_tag=step_tag, max_length=max_length)
        kept = []
        for u in self.units:
            if len(u.tag_positions) < len(self.records[u.index].completions):
                self.dropped += 1
                continue
            u.tag_positions, u.tag_labels = u.tag_positions[-1:], u.tag_labels[-1:]
            u.step_spans = u.step_spans[-1:]
            kept.append(u)
        self.units = kept
        self.truncated_steps = 0
        if not self.units:
            raise ValueError(f"ORM data: no solution fits in max_length={max_length}")
        self.num_tokens = sum(len(u.input_ids) for u in self.units)
        self.num_steps = len(self.units)
        self.num_good = sum(u.tag_labels[0] >= 0.5 for u in self.units)
