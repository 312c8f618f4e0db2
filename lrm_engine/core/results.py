"""results.jsonl: one JSON object per problem, appended as each batch finishes; resumable.

A run that is interrupted and started again with the same output folder skips the problems
already written and appends the rest: nothing lost, nothing written twice. A torn last line
(the process died mid-write) is dropped on open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable


class ResultsFile:
    """Append-only JSONL keyed by ``id``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        good: list[str] = []
        raw = self.path.read_text(encoding="utf-8")
        for line in raw.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # torn last line
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            self._done[str(rec["id"])] = rec
            good.append(line)
        kept = "".join(good)
        if kept != raw:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_text(kept, encoding="utf-8")
            os.replace(tmp, self.path)

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
