"""JSON Lines record files shared by the training-data loaders (SFT, PRM, preference pairs).

:func:`load_jsonl_records` is the one reading loop: every non-blank line is parsed as JSON and
handed to the loader's record validator; a line that is not UTF-8 text, not JSON, or that the
validator refuses (it raises the loader's record error), is reported as ``file:line: reason``
(the first ``max_logged`` as warnings), skipped and counted in the report. Blank lines are not records and
are ignored. :func:`write_jsonl_records` is the matching atomic writer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from lrm_engine.textlines import read_lines

log = logging.getLogger("lrm_engine.train")


@dataclass
class JSONLLoadReport:
    """What a loader read: the valid records and every skipped line."""

    path: str
    records: list
    # Malformed lines skipped.
    skipped: int = 0
    # "file:line: reason" for each skipped line.
    errors: list[str] = field(default_factory=list)


R = TypeVar("R", bound=JSONLLoadReport)


def load_jsonl_records(path: str | Path, validate: Callable[[Any], Any], report_type: type[R], *,
                       record_error: type[Exception], what: str, limit: int | None = None,
                       max_logged: int = 20, summarize: bool = True) -> R:
    """Read a JSONL file of records into a ``report_type`` report.

    ``validate`` turns a parsed JSON value into a record or raises ``record_error`` (whose
    message is the reason). ``limit`` stops after that many valid records. ``what`` names the
    data in the log lines (``"PRM data"``); ``summarize`` adds a closing warning with the count
    when more than ``max_logged`` lines were skipped.
    """
    path = Path(path)
    report = report_type(path=str(path), records=[])
    for lineno, line, reason in read_lines(path):
        if limit is not None and len(report.records) >= limit:
            break
        if line is not None:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                reason = f"invalid JSON ({e})"
            else:
                try:
                    report.records.append(validate(obj))
                    continue
                except record_error as e:
                    reason = str(e)
        msg = f"{path}:{lineno}: {reason}"
        report.errors.append(msg)
        report.skipped += 1
        if report.skipped <= max_logged:
            log.warning("%s: skipped malformed record: %s", what, msg)
    if summarize and report.skipped > max_logged:
        log.warning("%s: %d malformed records skipped in %s (first %d shown)",
                    what, report.skipped, path, max_logged)
    return report


def write_jsonl_records(path: str | Path, records: Iterable) -> int:
    """Write records (anything with ``to_json()``) as JSONL, atomically (temp file + rename);
    returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json()) + "\n")
            n += 1
    tmp.replace(path)
    return n
