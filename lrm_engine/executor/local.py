"""``executor=local``: the batches run one after the other in this process."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from lrm_engine.executor.work import BatchResult, RunReport, Work, chunks


class LocalExecutor:
    """Runs a work's batches in-process, in order; each result goes to ``sink`` as it is made."""

    name = "local"
    # The work runs on the driver's own components (their counters and stats are updated in place).
    remote = False

    def run(self, work: Work, units: Sequence[Any], sink: Callable[[BatchResult], None], *,
            batch_size: int, progress: bool = True, desc: str = "work") -> RunReport:
        report = RunReport(executor=self.name)
        t0 = time.perf_counter()
        bar = None
        if progress and units:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(units), desc=desc, unit="problem", leave=False)
        try:
            work.setup()
            for batch in chunks(units, batch_size):
                res = work.run(batch)
                sink(res)
                report.add(res)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        report.wall_s = round(time.perf_counter() - t0, 3)
        return report

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
