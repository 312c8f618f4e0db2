"""The work of ``lrm annotate`` and the ``lrm run`` annotate stage: label a batch of examples.

The annotator runs its own ``annotate(ctx, examples, grade, out, ...)`` on the batch, with ``out``
a *recording* stand-in of the driver's output class (``ResultsFile`` / the grouped writer): it
keeps the calls the annotator makes (``append(records)``, ``commit(finished)``) and the driver
replays them on the real output (:func:`replay`). So the driver writes exactly what the
annotator would have written in-process, and the output's own exactly-once rules (ledger,
duplicate ids) apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from lrm_engine.executor.work import BatchResult, delta

# The output methods that write (the ones recorded and replayed).
WRITES = ("append", "commit")


@dataclass
class AnnotateParts:
    """What annotating needs, built once per worker."""

    # The annotator (annotate(ctx, examples, grade, out, batch_size, progress[, completer])).
    annotator: Any
    # SearchContext of the policy.
    ctx: Any
    # grade(example, solution) -> bool: the task's grader.
    grade: Callable[[Any, str], bool]
    # SearchContext of a separate completer (mc_rollout's Math-Shepherd completer), or None.
    completer: Any = None


def recording(cls: type) -> Any:
    """A stand-in instance of the output class ``cls`` that records its write calls."""

    def __init__(self) -> None:
        self.calls = []
        self._recs = []

    def done(self, id_: str) -> bool:  # the driver hands out only problems not yet written
        return False

    def append(self, records) -> None:
        records = list(records)
        self.calls.append(("append", records))
        self._recs.extend(records)

    def commit(self, finished) -> None:
        finished = [(pid, list(recs), status) for pid, recs, status in finished]
        self.calls.append(("commit", finished))
        self._recs.extend(r for _, recs, _ in finished for r in recs)

    def records(self) -> list:
        return list(self._recs)

    body = {"__init__": __init__, "done": done, "append": append, "commit": commit, "records": records}
    return type(f"Recording{cls.__name__}", (cls,), body)()


def replay(out: Any, items: list[tuple[str, Any]]) -> None:
    """Make the recorded write calls on the real output ``out``."""
    for name, payload in items:
        if name not in WRITES:
            raise ValueError(f"not an output write: {name!r}")
        getattr(out, name)(payload)


class AnnotateWork:
    """Annotate batches of examples with the parts ``build()`` makes (or ``parts`` given).

    out_cls: the class of the driver's output (ResultsFile or the annotator's grouped writer).
    """

    def __init__(self, out_cls: type, build: Callable[[], AnnotateParts] | None = None,
                 parts: AnnotateParts | None = None):
        if build is None and parts is None:
            raise TypeError("AnnotateWork needs build (a picklable callable) or parts")
        self.out_cls = out_cls
        self.build = build
        self.parts = parts

    def __getstate__(self) -> dict[str, Any]:
        if self.build is None:
            raise TypeError("AnnotateWork built from parts runs in-process only (give it build=)")
        return {"out_cls": self.out_cls, "build": self.build, "parts": None}

    def setup(self) -> None:
        if self.parts is None:
            self.parts = self.build()

    def run(self, batch: Sequence[Any]) -> BatchResult:
        self.setup()
        p = self.parts
        stats = getattr(p.annotator, "stats", None)
        s0 = dict(stats) if stats is not None else {}
        c0 = p.ctx.counters()
        k0 = p.completer.counters() if p.completer is not None else {}
        t0 = dict(p.ctx.timings)
        out = recording(self.out_cls)
        extra = {"completer": p.completer} if p.completer is not None else {}
        p.annotator.annotate(p.ctx, list(batch), p.grade, out, batch_size=max(len(batch), 1),
                             progress=False, **extra)
        counters = {"policy": delta(p.ctx.counters(), c0)}
        if p.completer is not None:
            counters["completer"] = delta(p.completer.counters(), k0)
        return BatchResult(items=out.calls, problems=len(batch), counters=counters,
                           timings=delta(dict(p.ctx.timings), t0),
                           stats=delta(dict(stats), s0) if stats is not None else {})
