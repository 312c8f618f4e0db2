"""Shared helpers for the benchmarks in bench/: thread pinning, timing, machine info, JSON output.

Import this module *before* torch, numpy or jax: `pin_threads()` sets the thread-count
environment variables those libraries read when they are first imported.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

# Every library that may start a thread pool reads one of these at import time.
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    # JAX / XLA on CPU: no Eigen thread pool, one intra-op thread.
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "JAX_PLATFORMS": "cpu",
}


def pin_threads(cpu: int | None = None) -> dict[str, Any]:
    """One compute thread everywhere; optionally bind the process to one CPU core.

    Must run before torch / numpy / jax are imported (the environment variables are read at
    import); torch.set_num_threads(1) is applied as well if torch is importable.
    Returns a description for the benchmark's JSON.
    """
    for key, val in THREAD_ENV.items():
        if key == "XLA_FLAGS" and os.environ.get(key):
            # Keep flags the caller set, add ours.
            if "xla_cpu_multi_thread_eigen" not in os.environ[key]:
                os.environ[key] = os.environ[key] + " " + val
            continue
        os.environ[key] = val
    affinity = None
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        core = allowed[cpu % len(allowed)]
        os.sched_setaffinity(0, {core})
        affinity = [core]
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set / parallel work already started
        pass
    return {
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": 1,
        "xla_flags": os.environ["XLA_FLAGS"],
        "cpu_affinity": affinity,
    }


def time_runs(
    fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, sync: Callable[[Any], Any] | None = None
) -> dict[str, Any]:
    """Run fn `warmup` times untimed, then `repeats` times timed; median and all runs in seconds.

    Wall-clock time (perf_counter) is the figure; the process's CPU time (all its threads) is
    recorded beside it (median_cpu_s), which stays meaningful when other work shares the cores.
    sync(result) is called inside the timed region (e.g. jax's block_until_ready).
    """
    for _ in range(warmup):
        r = fn()
        if sync is not None:
            sync(r)
    times, cpu = [], []
    for _ in range(repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        r = fn()
        if sync is not None:
            sync(r)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "runs_s": times,
        "median_cpu_s": statistics.median(cpu),
    }


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (how busy the shared cores were), if the OS says."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def emit(record: dict[str, Any]) -> None:
    """Print the result as one JSON object on the last stdout line."""
    sys.stdout.flush()
    print(json.dumps(record, sort_keys=False), flush=True)


def time_interleaved(
    cases: dict[str, tuple[Callable[[], Any], Callable[[Any], Any] | None]],
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, dict[str, Any]]:
    """Time several variants round-robin (one run of each per round), so that load from other
    processes on shared cores falls on all of them alike. Same result format as `time_runs`."""
    for fn, sync in cases.values():
        for _ in range(warmup):
            r = fn()
            if sync is not None:
                sync(r)
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, (fn, sync) in cases.items():
            c0 = time.process_time()
            t0 = time.perf_counter()
            r = fn()
            if sync is not None:
                sync(r)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {
        k: {
            "median_s": statistics.median(wall[k]),
            "min_s": min(wall[k]),
            "runs_s": wall[k],
            "median_cpu_s": statistics.median(cpu[k]),
        }
        for k in cases
    }
