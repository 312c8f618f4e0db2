"""The work of ``lrm search`` and the ``lrm run`` sweep: search a batch of problems, return records.

``SearchWork.run(problems)`` runs :func:`lrm_engine.core.engine.run_search` on the batch into an
in-memory collector (the driver alone writes results.jsonl), so a batch gets exactly the records
and per-problem counters it gets when the verb runs in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from lrm_engine.executor.work import BatchResult, delta


@dataclass
class SearchParts:
    """What searching needs, built once per worker."""

    # The search algorithm (SearchAlgorithm).
    search: Any
    # The SearchContext (policy, reward, step convention, prompt, kernels, seed).
    ctx: Any


class Collected:
    """A results sink in memory: ``run_search`` appends a batch's records to it."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def done(self, id_: str) -> bool:  # the driver hands out only problems not yet written
        return False

    def append(self, records) -> None:
        self.items.extend(records)

    def records(self) -> list[dict[str, Any]]:
        return list(self.items)


class SearchWork:
    """Search batches of problems with the parts ``build()`` makes (or ``parts`` given)."""

    def __init__(self, build: Callable[[], SearchParts] | None = None, parts: SearchParts | None = None):
        if build is None and parts is None:
            raise TypeError("SearchWork needs build (a picklable callable) or parts")
        self.build = build
        self.parts = parts

    def __getstate__(self) -> dict[str, Any]:
        if self.build is None:
            raise TypeError("SearchWork built from parts runs in-process only (give it build=)")
        return {"build": self.build, "parts": None}  # never ship loaded models

    def setup(self) -> None:
        if self.parts is None:
            self.parts = self.build()

    def run(self, batch: Sequence[Any]) -> BatchResult:
        from lrm_engine.core.engine import run_search

        self.setup()
        search, ctx = self.parts.search, self.parts.ctx
        c0, t0 = ctx.counters(), dict(ctx.timings)
        out = Collected()
        run_search(search, ctx, list(batch), out, batch_size=max(len(batch), 1), progress=False)
        return BatchResult(items=out.items, problems=len(batch),
                           counters={"policy": delta(ctx.counters(), c0)},
                           timings=delta(dict(ctx.timings), t0))
