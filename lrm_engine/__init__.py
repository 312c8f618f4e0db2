"""lrm_engine: batched tree search, incremental PRM scoring, and training on what search produces.

Three ways in, one configuration: the ``lrm`` command, :func:`compose` + :func:`build` from
Python, or components constructed directly (see docs/embedding.md). Imports are lazy:
``import lrm_engine`` does not import torch, transformers or Hydra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute), imported on first access
_LAZY: dict[str, tuple[str, str]] = {
    "compose": ("lrm_engine.composition", "compose"),
    "ConfigError": ("lrm_engine.composition", "ConfigError"),
    "build": ("lrm_engine.components", "build"),
    "Components": ("lrm_engine.components", "Components"),
    "get_plugin_manager": ("lrm_engine.plugin_manager", "get_plugin_manager"),
    "hookimpl": ("lrm_engine.hookspecs", "hookimpl"),
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from lrm_engine.components import Components, build
    from lrm_engine.composition import ConfigError, compose
    from lrm_engine.hookspecs import hookimpl
    from lrm_engine.plugin_manager import get_plugin_manager


def __getattr__(name: str) -> Any:
    """Import the public API lazily (PEP 562)."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lrm_engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
