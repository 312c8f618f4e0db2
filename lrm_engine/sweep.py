"""``lrm <verb> -m a=1,2 b=x,y``: one job per combination, each in its own folder, one table.

Hydra's convention: a sweep folder (the jobs' common ``runtime.output_dir``) with one subfolder
per job, named by the job's swept overrides (Hydra's ``override_dirname``:
``search=majority,search.n=4``). Every job resumes in its own folder (the results fingerprint
of lrm_engine/fingerprint.py guards it), so rerunning a sweep finishes what an interrupted one
left. At the end the sweep prints one table over its jobs (the swept values and each job's
scalar results) and writes it to ``<sweep folder>/sweep.md`` and ``sweep.jsonl``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

# Results shown first when a job reports them (then every other scalar, in the job's order).
PREFERRED = ("problems", "accuracy", "correct", "answered", "tokens_computed",
             "policy_tokens_computed", "reward_tokens_computed", "tokens_reused", "resumed", "wall_s")
OUTPUT_KEY = "runtime.output_dir"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys(jobs: Sequence[Sequence[str]]) -> list[str]:
    """The override keys whose value differs between jobs, in command-line order."""
    keys: list[str] = []
    for i, ov in enumerate(jobs[0]):
        if len({job[i] for job in jobs}) > 1:
            keys.append(_key(ov))
    return keys


def job_name(job: Sequence[str], keys: Sequence[str]) -> str:
    """The job's folder name: its swept overrides joined by ',' (path-safe)."""
    parts = [ov for ov in job if _key(ov) in keys]
    return re.sub(r"[^\w.,=+~-]+", "_", ",".join(parts)) or "job"


def _scalars(results: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in results.items() if isinstance(v, (int, float, str, bool))}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def table(rows: list[dict[str, Any]], keys: Sequence[str]) -> str:
    """A Markdown table: one row per job, the swept values then the results' scalars."""
    cols: list[str] = [c for c in PREFERRED if any(c in r["results"] for r in rows)]
    for r in rows:
        for c, v in _scalars(r["results"]).items():
            if c not in cols and not isinstance(v, str):
                cols.append(c)
    head = list(keys) + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vals = [r["values"][k] for k in keys] + [_fmt(r["results"].get(c, "")) for c in cols]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def run_sweep(verb: str, jobs: list[list[str]], run_job: Callable[[str, list[str]], dict[str, Any]],
              compose: Callable[[list[str]], Any]) -> list[dict[str, Any]]:
    """Run every job in its own folder under the sweep folder; print and write the table."""
    keys = swept_keys(jobs)
    own_dirs = OUTPUT_KEY in keys  # the user sweeps the output folder itself: keep theirs
    root = Path(str(compose(jobs[0]).runtime.output_dir))
    rows = []
    for i, job in enumerate(jobs):
        name = job_name(job, keys)
        quoted = str(root / name).replace("\\", "\\\\").replace("'", "\\'")
        args = list(job) if own_dirs else [ov for ov in job if _key(ov) != OUTPUT_KEY] + [
            f"{OUTPUT_KEY}='{quoted}'"]  # quoted: the folder name holds '=' and ','
        print(f"[multirun {i + 1}/{len(jobs)}] {' '.join(job)} -> "
              f"{'its runtime.output_dir' if own_dirs else root / name}", file=sys.stderr)
        results = run_job(verb, args)
        values = {_key(ov): ov.split("=", 1)[1] if "=" in ov else ov for ov in job}
        rows.append({"job": name, "overrides": list(job), "values": values,
                     "dir": None if own_dirs else str(root / name), "results": _scalars(results)})
    text = table(rows, keys)
    print(f"\nlrm {verb} sweep: {len(jobs)} jobs under {root}\n{text}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "sweep.md").write_text(text + "\n", encoding="utf-8")
    with open(root / "sweep.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
    return rows
