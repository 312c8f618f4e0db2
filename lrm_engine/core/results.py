"""results.jsonl: one JSON object per problem, appended as each batch finishes; resumable.

A run that is interrupted and started again with the same output folder skips the problems
already written and appends the rest: nothing lost, nothing written twice.

Reading back (``scan_jsonl``) never loses a good record:

- a torn last line (the process died mid-write: no trailing newline) is cut;
- any other line that is not a record — blank, not JSON, not UTF-8, not an object, without
  ``"id"``, or a second record of an id already read — is moved to ``<file>.bad`` (appended,
  prefixed by ``<file>:<line>:``), counted (``bad_lines``) and reported once on stderr; every
  good record before and after it is kept.

Fingerprint: a results file written under a configuration carries a sidecar
``<file>.config.json`` with the fingerprint of the part of the composed config that shaped its
records (``lrm_engine/fingerprint.py``). Opening it under another fingerprint raises
:class:`ResultsMismatchError` naming both and the fix; ``overwrite=True``
(``runtime.overwrite=true``) first moves the old file and its sidecar aside
(``<file>.replaced-<n>``): nothing is deleted.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from lrm_engine.errors import UserError


class ResultsMismatchError(UserError):
    """The output folder holds results written under another configuration."""


@dataclass
class BadLine:
    """A line of a JSONL file that is not a record."""

    lineno: int  # 1-based
    raw: bytes  # the line's bytes, newline excluded
    why: str


@dataclass
class Scan:
    """What ``scan_jsonl`` read: the good records in file order and what was set aside."""

    records: list[dict[str, Any]]
    lines: list[bytes]  # the good records' lines, newline included, in file order
    linenos: list[int]  # their 1-based line numbers
    bad: list[BadLine]
    torn: bytes | None  # the torn last line, if any


def scan_jsonl(path: Path, key: str | None = "id") -> Scan:
    """Read a JSONL file of records (see the module doc for what is set aside).

    key: the field every record must carry, unique over the file (None: no key check).
    """
    data = path.read_bytes() if path.exists() else b""
    parts = data.split(b"\n")
    torn = parts.pop() or None  # after the last newline: b"" when the file ends with one
    out = Scan([], [], [], [], torn)
    seen: set[str] = set()
    for i, raw in enumerate(parts, start=1):
        why = None
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            why = "not UTF-8"
        except ValueError:
            why = "blank line" if not raw.strip() else "not JSON"
        if why is None and not isinstance(rec, dict):
            why = f"a JSON {type(rec).__name__}, not an object"
        if why is None and key is not None:
            if key not in rec:
                why = f'no "{key}"'
            elif str(rec[key]) in seen:
                why = f'a second record of {key} {rec[key]!r}'
            else:
                seen.add(str(rec[key]))
        if why is not None:
            out.bad.append(BadLine(i, raw, why))
            continue
        out.records.append(rec)
        out.lines.append(raw + b"\n")
        out.linenos.append(i)
    return out


def set_aside(path: Path, scan: Scan, keep: list[bytes] | None = None) -> None:
    """Rewrite ``path`` with only its good lines (``keep``, default ``scan.lines``) after moving
    its bad lines to ``<path>.bad``; report them once on stderr. No-op when nothing is bad."""
    keep = scan.lines if keep is None else keep
    if not scan.bad and scan.torn is None and len(keep) == len(scan.lines):
        return
    if scan.bad:
        bad_path = path.with_name(path.name + ".bad")
        with open(bad_path, "ab") as f:
            for b in scan.bad:
                f.write(f"{path.name}:{b.lineno}: ".encode() + b.raw + b"\n")
            f.flush()
            os.fsync(f.fileno())
        where = ", ".join(f"line {b.lineno} ({b.why})" for b in scan.bad[:5])
        more = f" and {len(scan.bad) - 5} more" if len(scan.bad) > 5 else ""
        print(f"lrm: {path}: {len(scan.bad)} line(s) that are not records moved to {bad_path}: "
              f"{where}{more}; the {len(scan.lines)} good record(s) are kept", file=sys.stderr)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"".join(keep))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _aside_name(path: Path) -> Path:
    n = 1
    while path.with_name(f"{path.name}.replaced-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.replaced-{n}")


def claim(path: Path, fp: dict[str, Any], overwrite: bool = False,
          companions: tuple[str, ...] = (".bad",)) -> None:
    """Tie the results file ``path`` to the fingerprint ``fp`` (sidecar ``<path>.config.json``).

    A new file gets the sidecar. An existing one (records or sidecar) under another fingerprint,
    or with none recorded, is refused (:class:`ResultsMismatchError`) unless ``overwrite``: then
    it, its sidecar and its companion files (``<path><suffix>``) are moved aside first.
    """
    from lrm_engine.fingerprint import describe_difference

    path = Path(path)
    meta = path.with_name(path.name + ".config.json")
    old = None
    if meta.exists():
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            old = {"fingerprint": "unreadable", "config": {}}
    if old is not None and old.get("fingerprint") == fp["fingerprint"]:
        return
    if (path.exists() and path.stat().st_size > 0) or old is not None:
        if not overwrite:
            theirs = str(old.get("fingerprint", "?"))[:12] if old else "none recorded"
            diff = describe_difference(old.get("config", {}) if old else None, fp["config"])
            raise ResultsMismatchError(
                f"{path} holds results of another configuration (fingerprint {theirs}; this run "
                f"{fp['fingerprint'][:12]}: {diff}); use a new runtime.output_dir, or "
                f"runtime.overwrite=true to move the old results aside")
        for p in (path, meta, *(path.with_name(path.name + c) for c in companions)):
            if p.exists():
                os.replace(p, _aside_name(p))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(fp, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, meta)


class ResultsFile:
    """Append-only JSONL keyed by ``id``.

    fingerprint: ``{"fingerprint": digest, "config": {...}}`` of the configuration that shapes
    the records (lrm_engine/fingerprint.py), checked against the sidecar on open; None: no check.
    overwrite: under another fingerprint, move the old results aside instead of refusing.
    """

    def __init__(self, path: str | os.PathLike[str], fingerprint: dict[str, Any] | None = None,
                 overwrite: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done: dict[str, dict[str, Any]] = {}
        self.bad_lines = 0
        if fingerprint is not None:
            claim(self.path, fingerprint, overwrite)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        scan = scan_jsonl(self.path)
        for rec in scan.records:
            self._done[str(rec["id"])] = rec
        self.bad_lines = len(scan.bad)
        set_aside(self.path, scan)

    def done(self, id_: str) -> bool:
        return str(id_) in self._done

    def records(self) -> list[dict[str, Any]]:
        return list(self._done.values())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (a batch) and flush them to disk."""
        lines = []
        for rec in records:
            key = str(rec["id"])
            if key in self._done:
                continue
            self._done[key] = rec
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
