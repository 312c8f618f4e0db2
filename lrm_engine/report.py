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
