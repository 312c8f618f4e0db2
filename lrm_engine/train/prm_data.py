"""PRM data: TRL-compatible process-supervision records, their loader/validator, tokenisation
with step-tag positions, collation, a resumable batch source, and the oracle-labelled variant.

Record format (one JSON object per line, TRL's "stepwise supervision" PRM format)::

    {"prompt": "((12+7)*3)-15=\\n",
     "completions": ["12+7=19", "19*3=58", "58-15=43", "Answer: 43"],
     "labels": [true, false, false, false]}

- ``prompt``: a string;
- ``completions``: a non-empty list of step strings (without the step delimiter);
- ``labels``: one per completion, a bool or a number in [0, 1] (a soft label: e.g. the share of
  Monte-Carlo rollouts from that prefix that reach the right answer). Bools become 1.0 / 0.0.

Any other keys are kept in :attr:`PRMRecord.meta` (e.g. ``id``, ``question``, ``error_step``) and
ignored by training. :func:`load_prm_jsonl` reports every malformed line as ``file:line: reason``
(logged as a warning), skips it and counts it; a blank line is not a record and is ignored.

Tokenisation (:func:`tokenize_prm`), exactly as TRL's PRMTrainer lays out a sequence::

    <bos> prompt  step_0 TAG  step_1 TAG ...  step_{n-1} TAG

where TAG is the step tag: the task's step delimiter (``"\\n"`` by default, one token with the
character tokenizer). Pieces are encoded separately, so piece boundaries are exact for any
tokenizer. Step ``i``'s label sits at the position of the *last* token of the TAG after it; all
other positions carry no label. A sequence longer than ``max_length`` is cut at the right and
keeps the tags inside it; a record with no tag left is dropped (counted).

The oracle-labelled variant (:func:`oracle_prm_records`): for tasks with exact step labels (the
``arith`` task) the records are built from the task's (noisy) solutions with the task's exact
*prefix* labels — step ``i`` is good iff steps ``0..i`` are all correct, which is what
Math-Shepherd's Monte-Carlo rollout labels estimate. It exists to test PRM training without an
annotator; it is named "oracle" everywhere (``objective.data.source=oracle``) so it is never
mistaken for annotated data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .data import DatasetBatchSource
from .jsonl import JSONLLoadReport, load_jsonl_records, write_jsonl_records

log = logging.getLogger("lrm_engine.train")

REQUIRED_KEYS = ("prompt", "completions", "labels")


class PRMRecordError(ValueError):
    """A record that does not follow the PRM format (the message says why)."""


@dataclass(frozen=True)
class PRMRecord:
    """One solution with a label per step (see the module docstring)."""

    prompt: str
    completions: tuple[str, ...]
    # One label per completion, in [0, 1] (1.0 = good step).
    labels: tuple[float, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The TRL record (meta keys alongside, never overriding the three required ones)."""
        out = {k: v for k, v in self.meta.items() if k not in REQUIRED_KEYS}
        out.update(prompt=self.prompt, completions=list(self.completions),
                   labels=[bool(v) if v in (0.0, 1.0) else v for v in self.labels])
        return out


def validate_prm_record(obj: Any) -> PRMRecord:
    """A :class:`PRMRecord` from a parsed JSON object; :class:`PRMRecordError` if malformed."""
    if not isinstance(obj, Mapping):
        raise PRMRecordError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise PRMRecordError(f"missing key(s) {missing}")
    prompt, comps, labels = obj["prompt"], obj["completions"], obj["labels"]
    if not isinstance(prompt, str):
        raise PRMRecordError(f"'prompt' must be a string, got {type(prompt).__name__}")
    if not isinstance(comps, list) or not comps:
        raise PRMRecordError("'completions' must be a non-empty list of strings")
    for i, c in enumerate(comps):
        if not isinstance(c, str):
            raise PRMRecordError(f"completions[{i}] must be a string, got {type(c).__name__}")
    if not isinstance(labels, list):
        raise PRMRecordError(f"'labels' must be a list, got {type(labels).__name__}")
    if len(labels) != len(comps):
        raise PRMRecordError(f"{len(comps)} completions but {len(labels)} labels")
    vals = []
    for i, v in enumerate(labels):
        if isinstance(v, bool):
            vals.append(1.0 if v else 0.0)
        elif isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0:
            vals.append(float(v))
        else:
            raise PRMRecordError(f"labels[{i}] must be a bool or a number in [0, 1], got {v!r}")
    meta = {k: v for k, v in obj.items() if k not in REQUIRED_KEYS}
    return PRMRecord(prompt, tuple(comps), tuple(vals), meta)


class PRMLoadReport(JSONLLoadReport):
    """What :func:`load_prm_jsonl` read: the valid records (:class:`PRMRecord`) and every
    skipped line (``skipped``, ``errors``: "file:line: reason")."""

    records: list[PRMRecord]


def load_prm_jsonl(path: str | Path, *, limit: int | None = None,
                   max_logged: int = 20) -> PRMLoadReport:
    """Read a PRM JSONL file; malformed lines are reported (``file:line: reason``) and skipped.

    ``limit`` stops after that many valid records. The first ``max_logged`` errors are logged
    as warnings, then a summary; all are in the report's ``errors``.
    """
    return load_jsonl_records(path, validate_prm_record, PRMLoadReport,
                              record_error=PRMRecordError, what="PRM data", limit=limit,
                              max_logged=max_logged)


def write_prm_jsonl(path: str | Path, records: Iterable[PRMRecord]) -> int:
    """Write records as TRL PRM JSONL (atomically: temp file + rename); returns the count."""
    return write_jsonl_records(path, records)


# --------------------------------------------------------------------------- oracle records


def oracle_prm_records(task, split: str = "train", *, limit: int | None = None,
                       noise_fraction: float = 0.5, noise_seed: int = 0) -> list[PRMRecord]:
    """Oracle-labelled PRM records from a task with exact step labels (see module docstring).

    The solutions are ``task.noisy_solutions(split, noise_fraction, noise_seed, limit)`` (gold,
    or gold with one wrong step carried through); labels are ``task.prefix_labels``. Meta keeps
    the problem ``id``, ``question`` and ``error_step``.
    """
    for need in ("noisy_solutions", "prefix_labels"):
        if not callable(getattr(task, need, None)):
            raise ValueError(
                f"oracle PRM data needs a task with exact step labels and a noise injector "
                f"({need}() missing on task {getattr(task, 'name', task)!r}); give a PRM JSONL "
                f"file instead (objective.data.source=<path>)")
    out = []
    for s in task.noisy_solutions(split, fraction=noise_fraction, seed=noise_seed, limit=limit):
        labels = task.prefix_labels(s.example, s.steps)
        out.append(PRMRecord(
            prompt=task.prompt(s.example.problem), completions=tuple(s.steps),
            labels=tuple(1.0 if v else 0.0 for v in labels),
            meta={"id": s.example.problem.id, "question": s.example.problem.question,
                  "error_step": s.error_step, "label_source": "oracle"}))
    return out


# --------------------------------------------------------------------------- tokenisation


@dataclass
class PRMUnit:
    """One tokenised record: ids, the tag position of each kept step, and its label."""

    input_ids: list[int]
    tag_positions: list[int]
    tag_labels: list[float]
    # Index of the record in the dataset's record list.
    index: int = -1
    # Per kept step, [start, end) of its own tokens (the tag after it excluded).
    step_spans: list[tuple[int, int]] = field(default_factory=list)


def tag_token_ids(tokenizer, step_tag: str) -> list[int]:
    """The token ids of the step tag (its last one is where labels sit)."""
    ids = tokenizer.encode(step_tag, add_special_tokens=False)
    if not ids:
        raise ValueError(f"the step tag {step_tag!r} encodes to no token")
    if getattr(tokenizer, "unk_token_id", None) is not None and tokenizer.unk_token_id in ids:
        raise ValueError(f"the step tag {step_tag!r} is not in the vocabulary (encodes to <unk>)")
    return ids


def tokenize_prm(tokenizer, prompt: str, steps: Sequence[str], labels: Sequence[float] | None,
                 step_tag: str, max_length: int, index: int = -1) -> PRMUnit | None:
    """``<bos> prompt (step TAG)*`` with the label of each step at its TAG's last token.

    Returns None when no tag fits in ``max_length`` (the caller counts it as dropped).
    ``labels`` may be None (scoring): the unit then carries zeros.
    """
    tag = tag_token_ids(tokenizer, step_tag)
    ids: list[int] = []
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    ids += tokenizer.encode(prompt, add_special_tokens=False)
    pos, labs, spans = [], [], []
    for i, step in enumerate(steps):
        start = len(ids)
        ids += tokenizer.encode(step, add_special_tokens=False)
        end = len(ids)
        ids += tag
        p = len(ids) - 1
        if p >= max_length:
            break
        pos.append(p)
        spans.append((start, end))
        labs.append(float(labels[i]) if labels is not None else 0.0)
    if not pos:
        return None
    return PRMUnit(ids[:max_length], pos, labs, index, spans)


class PRMDataset:
    """Tokenised PRM records (one unit per record)."""

    def __init__(self, records: Sequence[PRMRecord], tokenizer, step_tag: str = "\n",
                 max_length: int = 256):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token")
        self.records = list(records)
        self.pad_token_id = tokenizer.pad_token_id
        self.step_tag, self.max_length = step_tag, max_length
        self.units: list[PRMUnit] = []
        self.dropped = 0
        self.truncated_steps = 0
        for i, r in enumerate(self.records):
            u = tokenize_prm(tokenizer, r.prompt, r.completions, r.labels, step_tag, max_length, i)
            if u is None:
                self.dropped += 1
                continue
            self.truncated_steps += len(r.completions) - len(u.tag_positions)
            self.units.append(u)
        if self.dropped or self.truncated_steps:
            log.warning("PRM data: %d records dropped, %d steps cut (max_length=%d)",
                        self.dropped, self.truncated_steps, max_length)
        if not self.units:
            raise ValueError("PRM data: no record left to train on")
        self.num_tokens = sum(len(u.input_ids) for u in self.units)
        self.num_steps = sum(len(u.tag_positions) for u in self.units)
        self.num_good = sum(v >= 0.5 for u in self.units for v in u.tag_labels)

    def __len__(self) -> int:
        return len(self.units)

    def fingerprint(self) -> str:
        """A hash of the tokenised units: a resume refuses data that changed under it."""
        h = hashlib.sha256()
        for u in self.units:
            h.update(json.dumps([u.input_ids, u.tag_positions, u.tag_labels]).encode())
        return h.hexdigest()[:16]


def collate_prm(units: Sequence[PRMUnit], pad_token_id: int) -> dict[str, Any]:
    """Right-padded batch: ``input_ids [B, T]``, ``attention_mask [B, T]``, ``tag_mask [B, T]``
    (bool, True at step-tag positions), ``step_labels [B, T]`` (float, the label at tag
    positions, 0 elsewhere — never read there), ``step_of_token [B, T]`` (int64: for each token
    of a step, the tag excluded, the row-major index of that step's tag in the batch; -1
    elsewhere — what the likelihood read-out takes its minimum over) and ``num_tags``."""
    T = max(len(u.input_ids) for u in units)
    B = len(units)
    ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    am = torch.zeros((B, T), dtype=torch.long)
    tag = torch.zeros((B, T), dtype=torch.bool)
    lab = torch.zeros((B, T), dtype=torch.float32)
    owner = torch.full((B, T), -1, dtype=torch.long)
    k = 0
    for b, u in enumerate(units):
        n = len(u.input_ids)
        ids[b, :n] = torch.tensor(u.input_ids)
        am[b, :n] = 1
        p = torch.tensor(u.tag_positions, dtype=torch.long)
        tag[b, p] = True
        lab[b, p] = torch.tensor(u.tag_labels, dtype=torch.float32)
        for s, e in u.step_spans[: len(u.tag_positions)]:
            owner[b, s:e] = k
            k += 1
    return {"input_ids": ids, "attention_mask": am, "tag_mask": tag, "step_labels": lab,
            "step_of_token": owner, "num_tags": int(tag.sum())}


class PRMBatchSource(DatasetBatchSource):
    """Micro-batches of ``batch_size`` records from a :class:`PRMDataset`, in :class:`DataOrder`
    (the same resumable contract as :class:`~lrm_engine.train.data.SFTBatchSource`)."""

    data_name = "PRM data"

    def collate(self, units):
        return collate_prm(units, self.dataset.pad_token_id), [u.index for u in units]
