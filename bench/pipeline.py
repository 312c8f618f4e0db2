"""bench/pipeline.py: `lrm run` from a clean output folder; wall time and the scaling figures.

    python bench/pipeline.py [extra hydra overrides...]

Runs the main job exactly as the README's first command does (default settings unless
overrides are given), in a fresh output folder and a fresh default-model cache, with threads
pinned, and prints as its last line:

    {"bench": "pipeline", "wall_s": ..., "accuracy": {"greedy": ..., "majority@16": ...,
     "best_of_n@16": ..., "beam@16": ..., "pass@16": ...}, "gap_closed_beam16": ...}

gap_closed_beam16 = (beam@16 - greedy) / (pass@16 - greedy). Targets: wall <= 600 s on 2 cores,
gap_closed_beam16 >= 0.6.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, utc_now  # noqa: E402


def main() -> int:
    extra = sys.argv[1:]
    threads = os.environ.get("LRM_BENCH_THREADS", "2")
    with tempfile.TemporaryDirectory(prefix="lrm-bench-pipeline-") as tmp:
        out = Path(tmp) / "outputs"
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   LRM_CACHE=str(Path(tmp) / "cache"))
        cmd = [sys.executable, "-m", "lrm_engine", "run", f"runtime.output_dir={out}",
               f"runtime.num_threads={threads}", "runtime.progress=false", *extra]
        load0 = load_average()
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            print(json.dumps({"bench": "pipeline", "error": f"lrm run exited {r.returncode}",
                              "wall_s": wall}))
            return 1
        res = json.loads(r.stdout.strip().splitlines()[-1])
        report = (out / "default" / "report.md")
        if report.is_file():
            print(report.read_text(), file=sys.stderr)
    acc = res["accuracy"]
    nmax = max(int(k.split("@")[1]) for k in acc if "@" in k)
    keep = {"greedy": acc.get("greedy")}
    for k in ("majority", "best_of_n", "beam", "pass"):
        keep[f"{k}@{nmax}"] = acc.get(f"{k}@{nmax}")
    g, b, p = keep["greedy"], keep[f"beam@{nmax}"], keep[f"pass@{nmax}"]
    gap = (b - g) / (p - g) if None not in (g, b, p) and p - g > 1e-9 else None
    print(json.dumps({
        "bench": "pipeline", "wall_s": round(wall, 1), "accuracy": keep,
        f"gap_closed_beam{nmax}": gap, "prm_step_auroc": res.get("prm_step_auroc"),
        "prm_greedy_as_policy": res.get("prm_greedy_as_policy"),
        "stage_wall_s": res.get("stage_wall_s"), "threads": int(threads),
        "load_average_start": load0, "load_average_end": load_average(), "machine": machine(),
        "date": utc_now(), "overrides": extra,
        "targets": {"wall_s": 600, f"gap_closed_beam{nmax}": 0.6},
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
