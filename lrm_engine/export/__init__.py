"""Exports of searched trees: a compact JSON dict per problem (`tree_json`) and a
self-contained HTML viewer (`tree_html`). Switched on by the ``export`` config node."""

from __future__ import annotations

# The values of ``export.tree``.
TREE_EXPORTS = ("none", "json", "html")


def check_tree_export(name: str) -> str:
    if name not in TREE_EXPORTS:
        raise ValueError(f"unknown export.tree {name!r}; choose one of: {', '.join(TREE_EXPORTS)}")
    return name
