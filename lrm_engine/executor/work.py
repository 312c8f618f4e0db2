"""What an executor runs: a :class:`Work` (built once per worker, then run on batches) and what
comes back from each batch (:class:`BatchResult`), summed over a run (:class:`RunReport`).

A work object travels to Ray workers by pickling: it holds only plain data and a picklable
``build`` callable (a module-level function and its plain arguments), never loaded models;
``setup()`` calls ``build`` in the worker. The local executor gives it the driver's already
built parts instead, so nothing is built twice in one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence


@dataclass
class BatchResult:
    """What one batch produced, for the driver to write."""

    # What the sink writes (search: the records; annotate: the output calls to replay).
    items: list[Any]
    # Problems in the batch.
    problems: int
    # Counter increments of the batch, per named context ("policy", "completer").
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    # Wall-time increments per phase (policy, reward, ...), in seconds.
    timings: dict[str, float] = field(default_factory=dict)
    # Increments of the component's named counts (an annotator's ``stats``).
    stats: dict[str, int] = field(default_factory=dict)
    # Who ran it: "local" or "<worker index>@<host>:<pid>".
    worker: str = "local"


@dataclass
class RunReport:
    """A run's batches summed up (every number here was counted, none estimated)."""

    # Executor that ran them: local or ray.
    executor: str
    # Problems handed out this run (resumed ones excluded).
    problems: int = 0
    # Batches finished.
    batches: int = 0
    # Workers started, replacements included (1 for local).
    workers: int = 1
    # Workers that died mid-run and were replaced.
    restarts: int = 0
    # Batches handed out again after their worker died.
    retried_batches: int = 0
    # Counter sums per named context.
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    # Wall time per phase summed over the batches (over all workers: may exceed wall_s).
    timings: dict[str, float] = field(default_factory=dict)
    # Named counts summed over the batches.
    stats: dict[str, int] = field(default_factory=dict)
    # Wall time of the run, seconds.
    wall_s: float = 0.0

    def add(self, res: BatchResult) -> None:
        self.batches += 1
        self.problems += res.problems
        for name, c in res.counters.items():
            mine = self.counters.setdefault(name, {})
            for k, v in c.items():
                mine[k] = max(mine.get(k, 0), v) if "peak" in k else mine.get(k, 0) + v
        for k, v in res.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        for k, v in res.stats.items():
            self.stats[k] = self.stats.get(k, 0) + v


class Work(Protocol):
    """Turns batches of problems into finished records."""

    def setup(self) -> None:
        """Build the components (load the models); called once per worker, before ``run``."""

    def run(self, batch: Sequence[Any]) -> BatchResult:
        """Process one batch (problems or examples); the records it finished."""


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in consecutive lists of ``size`` (the last may be shorter)."""
    for i in range(0, len(items), max(int(size), 1)):
        yield list(items[i: i + size])


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Increments from ``before`` to ``after`` (peaks: the value after)."""
    return {k: (v if "peak" in k else v - before.get(k, 0)) for k, v in after.items()}
