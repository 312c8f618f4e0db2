"""SFT data: TRL prompt-completion JSONL records and their loader/validator.

Record format (one JSON object per line; TRL's "prompt-completion" SFT format)::

    {"prompt": "((12+7)*3)-15=\\n", "completion": "12+7=19\\n19*3=57\\n57-15=42\\nAnswer: 42\\n"}

- ``prompt``: a string (may be empty); ``completion``: a non-empty string.
- TRL's conversational format (lists of messages) is refused with a clear reason.

Any other keys (``id``, ``wrong_step``, ...) are kept in :attr:`SFTRecord.meta`.
:func:`load_sft_jsonl` reports every malformed line as ``file:line: reason`` (logged as a
warning), skips it and counts it; blank lines are ignored. ``journey`` annotations are written in
this format; :func:`to_sft_examples` turns records into :class:`~lrm_engine.train.data.SFTExample`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .jsonl import JSONLLoadReport, load_jsonl_records

log = logging.getLogger("lrm_engine.train")

REQUIRED_KEYS = ("prompt", "completion")


class SFTRecordError(ValueError):
    """A record that does not follow the SFT format (the message says why)."""


@dataclass(frozen=True)
class SFTRecord:
    """One prompt with its target completion."""

    prompt: str
    completion: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {k: v for k, v in self.meta.items() if k not in REQUIRED_KEYS}
        out.update(prompt=self.prompt, completion=self.completion)
        return out


def validate_sft_record(obj: Any) -> SFTRecord:
    """An :class:`SFTRecord` from a parsed JSON object; :class:`SFTRecordError` if malformed."""
    if not isinstance(obj, Mapping):
        raise SFTRecordError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj or any(isinstance(obj.get(k), list) for k in REQUIRED_KEYS):
        raise SFTRecordError("conversational records (lists of messages) are not supported: "
                             "give 'prompt' and 'completion' strings")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise SFTRecordError(f"missing key(s) {missing}")
    for k in REQUIRED_KEYS:
        if not isinstance(obj[k], str):
            raise SFTRecordError(f"'{k}' must be a string, got {type(obj[k]).__name__}")
    if not obj["completion"].strip():
        raise SFTRecordError("'completion' is empty")
    return SFTRecord(obj["prompt"], obj["completion"],
                     {k: v for k, v in obj.items() if k not in REQUIRED_KEYS})


class SFTLoadReport(JSONLLoadReport):
    """What :func:`load_sft_jsonl` read: the valid records (:class:`SFTRecord`) and every
    skipped line (``skipped``, ``errors``: "file:line: reason")."""

    records: list[SFTRecord]


def load_sft_jsonl(path: str | Path, *, limit: int | None = None, max_logged: int = 20) -> SFTLoadReport:
    """Read an SFT JSONL file; malformed lines are reported, skipped and counted."""
    return load_jsonl_records(path, validate_sft_record, SFTLoadReport,
                              record_error=SFTRecordError, what="SFT data", limit=limit,
                              max_logged=max_logged, summarize=False)


def to_sft_examples(records):
    """:class:`~lrm_engine.train.data.SFTExample` objects (prompt, completion, meta)."""
    from .data import SFTExample

    return [SFTExample(r.prompt, r.completion, dict(r.meta)) for r in records]
