"""Preference data for the DPO family (``dpo``, ``ipo``, ``odpo``, ``step_dpo``): TRL DPO JSONL
records, their loader/validator, tokenisation with completion masks, collation and a
resumable batch source.

Record format (one JSON object per line; TRL's "standard" preference format with an explicit
prompt)::

    {"prompt": "((12+7)*3)-15=\\n", "chosen": "12+7=19\\n19*3=57\\n...", "rejected": "..."}

- ``prompt``, ``chosen``, ``rejected``: strings (``chosen`` / ``rejected`` non-empty). TRL's
  conversational format (lists of messages) and implicit-prompt records are refused with a
  clear reason (this engine trains plain-text policies);
- optional scores ``score_chosen`` / ``score_rejected`` (numbers; the names of UltraFeedback
  binarized; ``chosen_score`` / ``rejected_score`` are accepted too). ``odpo`` needs them with
  ``score_chosen > score_rejected``;
- step records (``step_dpo``): optional ``prefix`` — or Step-DPO's ``initial_reason_steps`` — the
  solution steps before the compared step, as text (empty: the first step); ``chosen`` /
  ``rejected`` are then the two candidate next steps.

Any other keys are kept in :attr:`PrefRecord.meta`. :func:`load_pref_jsonl` reports every
malformed line as ``file:line: reason`` (logged as a warning), skips it and counts it; blank
lines are ignored.

Tokenisation (:func:`tokenize_pref`)::

    <bos> prompt prefix | completion completion_suffix [<eos>]

prompt, prefix and completion are encoded separately (exact boundaries for any tokenizer); the
completion mask is 1 on the completion tokens (with the suffix and eos), 0 on the context. A
pair longer than ``max_length`` is cut at the right; a pair with no completion token left on
either side is dropped (counted). The collated batch holds both sides padded to the same width
(the ``pref`` batch layout of :mod:`lrm_engine.objectives.dpo`).
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

REQUIRED_KEYS = ("prompt", "chosen", "rejected")
SCORE_KEYS = (("score_chosen", "chosen_score"), ("score_rejected", "rejected_score"))
PREFIX_KEYS = ("prefix", "initial_reason_steps")


class PrefRecordError(ValueError):
    """A record that does not follow the preference format (the message says why)."""


@dataclass(frozen=True)
class PrefRecord:
    """One preference pair (see the module docstring)."""

    prompt: str
    chosen: str
    rejected: str
    score_chosen: float | None = None
    score_rejected: float | None = None
    # Step records: the solution steps before the compared step ("" for full completions).
    prefix: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.meta.items() if k not in REQUIRED_KEYS}
        out.update(prompt=self.prompt, chosen=self.chosen, rejected=self.rejected)
        if self.prefix:
            out["prefix"] = self.prefix
        if self.score_chosen is not None:
            out["score_chosen"] = self.score_chosen
        if self.score_rejected is not None:
            out["score_rejected"] = self.score_rejected
        return out


def _score(obj: Mapping, names: tuple[str, ...]) -> float | None:
    for k in names:
        if k in obj and obj[k] is not None:
            v = obj[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PrefRecordError(f"'{k}' must be a finite number, got {v!r}")
            return float(v)
    return None


def validate_pref_record(obj: Any, *, require_scores: bool = False,
                         require_margin: bool = False) -> PrefRecord:
    """A :class:`PrefRecord` from a parsed JSON object; :class:`PrefRecordError` if malformed.

    ``require_scores``: both scores must be present; ``require_margin`` (``odpo``): also
    ``score_chosen > score_rejected``.
    """
    if not isinstance(obj, Mapping):
        raise PrefRecordError(f"expected a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj and "chosen" in obj:
        raise PrefRecordError("no 'prompt' (TRL's implicit-prompt format is not supported: give "
                              "the prompt separately)")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise PrefRecordError(f"missing key(s) {missing}")
    for k in REQUIRED_KEYS:
        v = obj[k]
        if isinstance(v, list):
            raise PrefRecordError(f"'{k}' is a list (TRL's conversational format is not "
                                  f"supported: give plain strings)")
        if not isinstance(v, str):
            raise PrefRecordError(f"'{k}' must be a string, got {type(v).__name__}")
    for k in ("chosen", "rejected"):
        if not obj[k]:
            raise PrefRecordError(f"'{k}' is empty")
    prefix = ""
    for k in PREFIX_KEYS:
        if k in obj and obj[k] is not None:
            if not isinstance(obj[k], str):
                raise PrefRecordError(f"'{k}' must be a string, got {type(obj[k]).__name__}")
            prefix = obj[k]
            break
    sc, sr = _score(obj, SCORE_KEYS[0]), _score(obj, SCORE_KEYS[1])
    if (require_scores or require_margin) and (sc is None or sr is None):
        raise PrefRecordError("missing score_chosen / score_rejected (this objective needs the "
                              "scores of both completions)")
    if require_margin and not sc > sr:
        raise PrefRecordError(
            f"score_chosen (r_w={sc!r}) must exceed score_rejected (r_l={sr!r}): ODPO's offset "
            f"alpha*log(r_w - r_l) is undefined for r_w <= r_l")
    skip = set(REQUIRED_KEYS) | set(PREFIX_KEYS) | {k for ks in SCORE_KEYS for k in ks}
    meta = {k: v for k, v in obj.items() if k not in skip}
    return PrefRecord(obj["prompt"], obj["chosen"], obj["rejected"], sc, sr, prefix, meta)


class PrefLoadReport(JSONLLoadReport):
    """What :func:`load_pref_jsonl` read: the valid records (:class:`PrefRecord`) and every
    skipped line (``skipped``, ``errors``: "file:line: reason")."""

    records: list[PrefRecord]


def load_pref_jsonl(path: str | Path, *, limit: int | None = None, require_scores: bool = False,
                    require_margin: bool = False, max_logged: int = 20) -> PrefLoadReport:
    """Read a preference JSONL file; malformed lines are reported (``file:line: reason``),
    skipped and counted. ``limit`` stops after that many valid records."""
    def validate(obj):
        return validate_pref_record(obj, require_scores=require_scores,
                                    require_margin=require_margin)

    return load_jsonl_records(path, validate, PrefLoadReport, record_error=PrefRecordError,
                              what="pref data", limit=limit, max_logged=max_logged)


def write_pref_jsonl(path: str | Path, records: Iterable[PrefRecord]) -> int:
    """Write records as JSONL (atomically: temp file + rename); returns the count."""
    return write_jsonl_records(path, records)


# --------------------------------------------------------------------------- tokenisation


@dataclass
class PrefUnit:
    """One tokenised pair: ids and completion mask of each side."""

    chosen_ids: list[int]
    chosen_mask: list[int]
    rejected_ids: list[int]
    rejected_mask: list[int]
    score_chosen: float | None = None
    score_rejected: float | None = None
    index: int = -1


def _side(ctx: list[int], comp: list[int], max_length: int):
    ids = (ctx + comp)[:max_length]
    mask = ([0] * len(ctx) + [1] * len(comp))[:max_length]
    return ids, mask


def tokenize_pref(tokenizer, record: PrefRecord, max_length: int, *, add_eos: bool = True,
                  completion_suffix: str = "", index: int = -1) -> PrefUnit | None:
    """Both sides of a pair (see the module docstring); None when a side keeps no completion
    token within ``max_length``."""
    ctx: list[int] = []
    if tokenizer.bos_token_id is not None:
        ctx.append(tokenizer.bos_token_id)
    ctx += tokenizer.encode(record.prompt, add_special_tokens=False)
    if record.prefix:
        ctx += tokenizer.encode(record.prefix, add_special_tokens=False)
    tail = tokenizer.encode(completion_suffix, add_special_tokens=False) if completion_suffix else []
    if add_eos:
        tail = tail + [tokenizer.eos_token_id]
    sides = []
    for text in (record.chosen, record.rejected):
        comp = tokenizer.encode(text, add_special_tokens=False) + tail
        ids, mask = _side(ctx, comp, max_length)
        if sum(mask) == 0:
            return None
        sides.append((ids, mask))
    return PrefUnit(sides[0][0], sides[0][1], sides[1][0], sides[1][1], record.score_chosen,
                    record.score_rejected, index)


class PrefDataset:
    """Tokenised preference pairs (one unit per record)."""

    def __init__(self, records: Sequence[PrefRecord], tokenizer, max_length: int = 256, *,
                 add_eos: bool = True, completion_suffix: str = ""):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token")
        self.records = list(records)
        self.pad_token_id = tokenizer.pad_token_id
        self.max_length = max_length
        self.units: list[PrefUnit] = []
        self.dropped = 0
        for i, r in enumerate(self.records):
            u = tokenize_pref(tokenizer, r, max_length, add_eos=add_eos,
                              completion_suffix=completion_suffix, index=i)
            if u is None:
                self.dropped += 1
                continue
            self.units.append(u)
        if self.dropped:
            log.warning("pref data: %d pairs dropped (context fills max_length=%d)",
                        self.dropped, max_length)
        if not self.units:
            raise ValueError("pref data: no pair left to train on")
        self.num_tokens = sum(len(u.chosen_ids) + len(u.rejected_ids) for u in self.units)

    def __len__(self) -> int:
        return len(self.units)

    def fingerprint(self) -> str:
        """A hash of the tokenised units: a resume refuses data that changed under it."""
        h = hashlib.sha256()
        for u in self.units:
            h.update(json.dumps([u.chosen_ids, u.chosen_mask, u.rejected_ids, u.rejected_mask,
                                 u.score_chosen, u.score_rejected]).encode())
        return h.hexdigest()[:16]


def collate_pref(units: Sequence[PrefUnit], pad_token_id: int) -> dict[str, Any]:
    """Right-padded ``pref`` batch: ``{chosen,rejected}_{input_ids,attention_mask,
    completion_mask} [B, T]`` (both sides the same ``T``), ``score_chosen`` /
    ``score_rejected [B]`` (NaN where a record has none; absent when no record has one) and
    ``num_tokens``."""
    T = max(max(len(u.chosen_ids), len(u.rejected_ids)) for u in units)
    B = len(units)
    out: dict[str, Any] = {}
    for side in ("chosen", "rejected"):
        ids = torch.full((B, T), pad_token_id, dtype=torch.long)
        am = torch.zeros((B, T), dtype=torch.long)
        cm = torch.zeros((B, T), dtype=torch.long)
        for b, u in enumerate(units):
            i, m = getattr(u, f"{side}_ids"), getattr(u, f"{side}_mask")
            ids[b, :len(i)] = torch.tensor(i)
            am[b, :len(i)] = 1
            cm[b, :len(m)] = torch.tensor(m)
        out[f"{side}_input_ids"], out[f"{side}_attention_mask"] = ids, am
        out[f"{side}_completion_mask"] = cm
    for side in ("chosen", "rejected"):
        vals = [getattr(u, f"score_{side}") for u in units]
        if any(v is not None for v in vals):
            out[f"score_{side}"] = torch.tensor([math.nan if v is None else v for v in vals],
                                                dtype=torch.float32)
    out["num_tokens"] = int(out["chosen_attention_mask"].sum() + out["rejected_attention_mask"].sum())
    return out


class PrefBatchSource(DatasetBatchSource):
    """Micro-batches of ``batch_size`` pairs from a :class:`PrefDataset`, in :class:`DataOrder`
    (the same resumable contract as :class:`~lrm_engine.train.data.SFTBatchSource`)."""

    data_name = "preference data"

    def collate(self, units):
        return collate_pref(units, self.dataset.pad_token_id), [u.index for u in units]
