"""The fingerprint of a results file: the part of the composed config that shaped its records.

``fingerprint(cfg, verb)`` keeps the config nodes the verb's records depend on
(``SHAPING[verb]``), drops the knobs that change how fast or where a run goes but not what it
writes (``IGNORED``: threads, progress bars, the output folder, batch size and problem limit —
records are the same for any batch size, see lrm_engine/core/rng.py —, KV budgets, devices,
kernel backends), and hashes the canonical JSON of the rest. The results file keeps both the
digest and the config (``<file>.config.json``, lrm_engine/core/results.py), so a refusal can
say which keys differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Config nodes (dotted) whose values shape the records of each verb.
SHAPING: dict[str, tuple[str, ...]] = {
    "search": ("task", "policy", "reward", "search", "search_run", "export.tree", "runtime.seed",
               "runtime.dtype"),
    "annotate": ("task", "policy", "annotate", "search_run", "runtime.seed", "runtime.dtype"),
}
# Dotted keys (inside the nodes above) that never change what a record says.
IGNORED: tuple[str, ...] = (
    "search_run.batch_size", "search_run.limit",
    "policy.kv_budget_mb", "reward.kv_budget_mb", "policy.device", "reward.device",
    "policy.backend", "reward.backend",
)


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return cfg


def _get(tree: Any, dotted: str) -> tuple[bool, Any]:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _drop(tree: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def shaping_config(cfg: Any, verb: str, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nodes of ``cfg`` that shape ``verb``'s records (dotted key -> plain value).

    resolved: dotted keys whose effective value the verb decided (a null split is the verb's
    default split), set before hashing so that ``null`` and its meaning hash alike.
    """
    full = _plain(cfg)
    out: dict[str, Any] = {}
    for key in SHAPING[verb]:
        found, value = _get(full, key)
        out[key] = json.loads(json.dumps(value, default=str)) if found else None
    for ign in IGNORED:
        head, _, rest = ign.partition(".")
        if isinstance(out.get(head), dict):
            _drop(out[head], rest)
    for key, value in (resolved or {}).items():
        head, _, rest = key.partition(".")
        if isinstance(out.get(head), dict):
            out[head][rest] = value
    return out


def fingerprint(cfg: Any, verb: str, resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"fingerprint": <16 hex>, "config": <shaping config>}`` of ``cfg`` for ``verb``."""
    conf = shaping_config(cfg, verb, resolved)
    blob = json.dumps(conf, sort_keys=True, separators=(",", ":"), default=str)
    return {"fingerprint": hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16], "config": conf}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def describe_difference(old: dict | None, new: dict, limit: int = 3) -> str:
    """The first ``limit`` keys whose values differ, as ``key: old -> new``."""
    if old is None:
        return "the old results record no configuration"
    a, b = _flat(old), _flat(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if not keys:
        return "the configurations differ"
    shown = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:limit]]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(shown) + more
