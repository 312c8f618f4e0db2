"""Scaling tables and plots: accuracy against total tokens computed (policy + PRM).

Rows are plain dicts ``{"search", "n", "accuracy", "tokens", ...}``; `markdown_table` renders
them, `plot_scaling` draws accuracy vs tokens (log x) with one line per search and pass@N as
the dashed ceiling, and `write_report` writes report.md + scaling.png into a folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-markdown table of rows (floats in [0, 1] named accuracy/pass* shown as %)."""

    def fmt(key: str, v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if key.startswith(("accuracy", "pass", "gap")):
                return f"{100 * v:.1f}%" if not math.isnan(v) else "-"
            return f"{v:.3g}" if abs(v) < 1e5 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def plot_scaling(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """accuracy vs total tokens computed, one line per search; pass@N dashed (the ceiling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    searches = sorted({r["search"] for r in rows if r["search"] != "pass"})
    for s in searches:
        pts = sorted((r["tokens"], r["accuracy"], r["n"]) for r in rows if r["search"] == s)
        if not pts:
            continue
        xs, ys, ns = zip(*pts)
        ax.plot(xs, [100 * y for y in ys], marker="o", label=s)
        for x, y, n in pts:
            ax.annotate(f"{n}", (x, 100 * y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ceiling = sorted((r["tokens"], r["accuracy"], r["n"]) for r in rows if r["search"] == "pass")
    if ceiling:
        xs, ys, _ = zip(*ceiling)
        ax.plot(xs, [100 * y for y in ys], linestyle="--", color="gray", marker="x", label="pass@N (ceiling)")
    ax.set_xscale("log")
    ax.set_xlabel("tokens computed per problem (policy + PRM)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | Path, title: str,
                 extra: str = "", columns: Sequence[str] = ("search", "n", "accuracy", "tokens")) -> Path:
    """report.md (table + extra text) and scaling.png in out_dir; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_scaling(rows, out / "scaling.png", title)
    text = f"# {title}\n\n{markdown_table(rows, columns)}\n\n![scaling](scaling.png)\n"
    if extra:
        text += "\n" + extra.strip() + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    return out / "report.md"


# --------------------------------------------------------------------------- findings


def _se(p: float, q: float, n: int) -> float:
    """Standard error of the difference of two accuracies measured on n problems each."""
    return math.sqrt(max(p * (1 - p), 0.0) / n + max(q * (1 - q), 0.0) / n) if n else math.nan


def compare(name_a: str, a: float, name_b: str, b: float, n: int) -> str:
    """One sentence comparing two accuracies on n problems, with its two-standard-error verdict."""
    if any(math.isnan(x) for x in (a, b)) or not n:
        return f"{name_a} vs {name_b}: not measured."
    d, se = a - b, _se(a, b, n)
    if abs(d) <= 2 * se:
        verdict = f"within noise of {name_b}"
    else:
        verdict = f"{'above' if d > 0 else 'below'} {name_b}"
    return (f"{name_a} ({100 * a:.1f}%) is {verdict} ({100 * b:.1f}%): {100 * d:+.1f} points, "
            f"2 standard errors = {200 * se:.1f} points on {n} problems.")


def findings(acc: dict[str, float], n_problems: int, nmax: int,
             verifier_as_policy: float | None = None, step_auroc: float | None = None,
             position_auroc: float | None = None) -> list[str]:
    """The report's findings, each computed from the measured numbers (no fixed sentence).

    acc: {"greedy": ..., "<search>@<n>": ...} accuracies on n_problems problems.
    """
    nan = math.nan
    greedy = acc.get("greedy", nan)
    out = []
    for key in sorted(k for k in acc if k.endswith(f"@{nmax}") and not k.startswith("pass@")):
        out.append(compare(key, acc[key], "greedy", greedy, n_problems))
    ceiling = acc.get(f"pass@{nmax}", nan)
    beam = acc.get(f"beam@{nmax}", nan)
    if not math.isnan(ceiling + beam + greedy) and ceiling - greedy > 1e-9:
        out.append(f"beam@{nmax} closes {(beam - greedy) / (ceiling - greedy):.2f} of the gap between "
                   f"greedy ({100 * greedy:.1f}%) and pass@{nmax} ({100 * ceiling:.1f}%).")
    if verifier_as_policy is not None:
        out.append(compare("The PRM's model used greedily as the policy", float(verifier_as_policy),
                           "the policy's greedy accuracy", greedy, n_problems)
                   + (" A verifier that solves more problems than the policy knows more than it; "
                      "part of what search with it gains is that knowledge."
                      if verifier_as_policy - greedy > 2 * _se(verifier_as_policy, greedy, n_problems)
                      else ""))
    if step_auroc is not None and position_auroc is not None:
        rel = "better than" if step_auroc > position_auroc + 0.02 else (
            "no better than" if step_auroc >= position_auroc - 0.02 else "worse than")
        out.append(f"The PRM ranks steps {rel} step position alone (step AUROC {step_auroc:.3f} vs "
                   f"{position_auroc:.3f}).")
    return out
