"""``executor=ray``: a verb's batches of problems spread over Ray actors.

Ray is a heavy, optional dependency (``pip install 'lrm_engine[ray]'``): it is imported here
only, and only when a run asks for ``executor=ray`` (:func:`import_ray`); nothing else in the
engine imports it, so the engine installs and runs without it.

How a run goes (:meth:`RayExecutor.run`):

1. Connect: a Ray already initialised in this process is used as it is; else ``address: null``
   starts a local Ray (``ray.init()``), ``auto`` / ``host:port`` / ``ray://host:port`` joins a
   cluster (an address that cannot be reached is one line naming it and the fix).
2. ``min(num_workers, batches)`` actors, each reserving ``num_cpus`` / ``num_gpus``; an actor
   gets the pickled :class:`~lrm_engine.executor.work.Work` (plain config, no models), sets its
   torch threads to ``num_cpus`` and builds the components once, at its first batch.
3. Batches (``search_run.batch_size`` problems, small: progress shows and a death loses little)
   go to whichever actor is free; each result goes to the driver's ``sink`` as it arrives (the
   driver alone writes the results file, in arrival order; resume works by id).
4. An actor that dies (``RayActorError``: killed, crashed, its node lost) is replaced by a new
   one that gets its batch again, up to ``max_restarts`` per run; the records of a batch reach
   the sink only once it has finished, so nothing is lost or written twice. An error raised by
   the work itself (a wrong model path, a bug) is not retried: it stops the run as it would
   in-process.
5. The actors are killed at the end of each run; ``close()`` shuts down a Ray this executor
   started or joined (the connection is kept across runs, e.g. the cells of a sweep).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from typing import Any, Callable, Sequence

from lrm_engine.errors import UserError
from lrm_engine.executor.work import BatchResult, RunReport, Work, chunks

# Environment variables a worker needs to find the same models and data as the driver.
PASSED_ENV = ("LRM_CACHE", "LRM_DATA", "LRM_DEFAULT_POLICY", "LRM_DEFAULT_PRM",
              "LRM_ENGINE_DISABLE_PLUGINS", "TRITON_INTERPRET")
# Test-only fault injection: the first worker calls os._exit(1) once it has run this many
# problems, with the batch that reached it still unreturned (tests/test_executor_ray.py).
TEST_EXIT_AFTER = "LRM_EXECUTOR_TEST_EXIT_AFTER"


def import_ray() -> Any:
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("executor=ray: Ray is not installed; pip install 'lrm_engine[ray]' "
                        "(or pip install ray), or use executor=local") from None
    return ray


class Worker:
    """The body of one Ray actor: runs batches of a work, building it at the first one."""

    def __init__(self, work: Work, index: int, threads: int, exit_after: int | None = None):
        self.work = work
        self.index = index
        self.threads = threads
        self.exit_after = exit_after
        self.problems = 0
        self.ready = False

    def run(self, batch: Sequence[Any]) -> BatchResult:
        if not self.ready:
            import torch

            torch.set_num_threads(self.threads)
            self.work.setup()
            self.ready = True
        res = self.work.run(batch)
        self.problems += len(batch)
        if self.exit_after is not None and self.problems >= self.exit_after:
            os._exit(1)  # test hook: die with this batch in flight
        res.worker = f"{self.index}@{socket.gethostname()}:{os.getpid()}"
        return res


def reachable(address: str, timeout: float = 5.0) -> str | None:
    """Why ``host:port`` (``ray://`` stripped) does not accept connections, or None."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as e:
        return str(e) or type(e).__name__


def unreachable_problem(address: str | None) -> str | None:
    """One line when ``host:port`` / ``ray://host:port`` accepts no connection (null and auto:
    None; auto is resolved by Ray itself when it connects)."""
    if address is None or address == "auto":
        return None
    why = reachable(address)
    if why is None:
        return None
    return (f"executor.address={address}: no Ray cluster answers there ({why}); start one with "
            f"`ray start --head` and use its address (or executor.address=auto on a node of it), "
            f"or executor.address=null to start a local Ray")


class RayExecutor:
    """Runs a work's batches on Ray actors (see the module doc)."""

    name = "ray"
    # The work runs in other processes: the driver's components are not used.
    remote = True

    def __init__(self, address: str | None = None, num_workers: int = 2, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, max_restarts: int = 3):
        for field, value, ok in (("num_workers", num_workers, isinstance(num_workers, int) and num_workers >= 1),
                                 ("num_cpus", num_cpus, num_cpus > 0),
                                 ("num_gpus", num_gpus, num_gpus >= 0),
                                 ("max_restarts", max_restarts, isinstance(max_restarts, int) and max_restarts >= 0)):
            if not ok:
                raise UserError(f"executor.{field}={value}: out of range (see conf/executor/ray.yaml)")
        self.address = address
        self.num_workers = int(num_workers)
        self.num_cpus = float(num_cpus)
        self.num_gpus = float(num_gpus)
        self.max_restarts = int(max_restarts)
        # This executor started (or joined) Ray and shuts it down on close().
        self.started = False

    # ------------------------------------------------------------------ connecting
    def connect(self, ray: Any) -> None:
        """Make sure Ray is initialised (a Ray this process already runs is used as it is)."""
        if ray.is_initialized():
            return
        if self.address is None:
            # "local": always a new Ray of our own; a bare ray.init() would try to join the
            # cluster recorded in /tmp/ray (a stale one hangs for minutes).
            ray.init(address="local", include_dashboard=False)
            self.started = True
            return
        problem = unreachable_problem(self.address)
        if problem:
            raise UserError(problem)
        try:
            ray.init(address=self.address)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(
                f"executor.address={self.address}: cannot join a Ray cluster ({first}); start one "
                f"with `ray start --head`, or use executor.address=null to start a local Ray") from None
        self.started = True

    def close(self) -> None:
        """Shut down the Ray this executor started or joined (one it found running stays)."""
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ running
    def run(self, work: Work, units: Sequence[Any], sink: Callable[[BatchResult], None], *,
            batch_size: int, progress: bool = True, desc: str = "work") -> RunReport:
        ray = import_ray()
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        report = RunReport(executor=self.name, workers=0)
        t0 = time.perf_counter()
        queue = deque(chunks(units, batch_size))
        if not queue:
            return report
        self.connect(ray)
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if env:
            opts["runtime_env"] = {"env_vars": env}
        actor_cls = ray.remote(Worker).options(**opts)
        threads = max(1, int(self.num_cpus))
        exit_after = os.environ.get(TEST_EXIT_AFTER)
        actors: dict[int, Any] = {}
        in_flight: dict[Any, tuple[int, list[Any]]] = {}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(units), desc=f"{desc} (ray)", unit="problem", leave=False)

        def start(slot: int) -> None:
            first = report.workers == 0 and slot == 0
            die = int(exit_after) if (exit_after and first) else None
            actors[slot] = actor_cls.remote(work, slot, threads, die)
            report.workers += 1

        def give(slot: int) -> None:
            if queue:
                batch = queue.popleft()
                in_flight[actors[slot].run.remote(batch)] = (slot, batch)

        try:
            for slot in range(min(self.num_workers, len(queue))):
                start(slot)
                give(slot)
            while in_flight:
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                slot, batch = in_flight.pop(ref)
                try:
                    res = ray.get(ref)
                except (RayActorError, WorkerCrashedError) as e:
                    report.restarts += 1
                    report.retried_batches += 1
                    queue.appendleft(batch)
                    ray.kill(actors.pop(slot))
                    why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                    if report.restarts > self.max_restarts:
                        raise UserError(
                            f"executor=ray: {report.restarts} workers died (last: {why}); the "
                            f"finished records are written: rerun to resume, or raise "
                            f"executor.max_restarts") from None
                    print(f"lrm: executor=ray: worker {slot} died ({type(e).__name__}); its batch of "
                          f"{len(batch)} problem(s) goes to a new worker "
                          f"(restart {report.restarts} of at most {self.max_restarts})",
                          file=sys.stderr, flush=True)
                    start(slot)
                    give(slot)
                    continue
                except RayTaskError as e:  # the work itself failed: as it would in-process
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from e
                    raise
                sink(res)
                report.add(res)
                if bar is not None:
                    bar.update(len(batch))
                give(slot)
        finally:
            if bar is not None:
                bar.close()
            for a in actors.values():
                try:
                    ray.kill(a)
                except Exception:  # already dead
                    pass
        report.wall_s = round(time.perf_counter() - t0, 3)
        return report
