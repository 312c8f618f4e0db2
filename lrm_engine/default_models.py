"""The embedded default models, and lazy handles for components whose model loads on first use.

``policy.path`` / ``reward.path`` default to ``null``, meaning "the embedded default model that
``lrm run`` trains" (the tiny policy and the tiny PRM). Where those live:

- ``$LRM_DEFAULT_POLICY`` / ``$LRM_DEFAULT_PRM`` if set;
- else ``$LRM_CACHE/default/policy`` and ``$LRM_CACHE/default/prm`` (``$LRM_CACHE`` defaults to
  ``~/.cache/lrm_engine``, the engine's cache folder).

A component built with a null path is a :class:`LazyHandle`: composing and building the config
needs no model (``tests/test_config.py`` builds every option); the path is resolved, and the model
loaded, at the first real use, with one clear error if the default model is not there yet.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

# kind -> (environment variable, folder under $LRM_CACHE/default, what trains it)
DEFAULTS: dict[str, tuple[str, str]] = {
    "policy": ("LRM_DEFAULT_POLICY", "policy"),
    "prm": ("LRM_DEFAULT_PRM", "prm"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("LRM_CACHE", Path.home() / ".cache" / "lrm_engine"))


def default_model_dir(kind: str) -> Path:
    """Where the embedded default model of ``kind`` ("policy" or "prm") is expected."""
    env, sub = DEFAULTS[kind]
    if os.environ.get(env):
        return Path(os.path.expanduser(os.environ[env]))
    return cache_dir() / "default" / sub


def default_model_origin(kind: str) -> str:
    """Where the default ``kind`` folder comes from, for messages: ``LRM_DEFAULT_POLICY=<dir>``
    when the variable is set, else the folder itself (under ``$LRM_CACHE``)."""
    env = DEFAULTS[kind][0]
    d = default_model_dir(kind)
    return f"{env}={d}" if os.environ.get(env) else f"the default {kind} folder {d}"


def resolve_model_path(path: str | None, kind: str, option: str) -> str:
    """``path`` itself, or the embedded default's folder when ``path`` is None (must exist)."""
    if path is not None:
        return str(path)
    from lrm_engine.models.loading import ModelLoadError

    d = default_model_dir(kind)
    if not (d / "config.json").is_file():
        env = DEFAULTS[kind][0]
        raise ModelLoadError(
            f"{option} is null, which means the embedded default {kind} model trained by "
            f"`lrm run`; there is none at `{d}` yet. Run `lrm run` first (it trains and saves "
            f"it there), or set {option}=<local model directory> (or ${env})"
        )
    return str(d)


class LazyHandle:
    """Stands in for a component until first use, then forwards everything to it.

    ``loader()`` builds the real object. ``configure(**attrs)`` sets attributes on it (at load
    time if it is not loaded yet). Unknown attributes are forwarded (loading on demand).
    """

    def __init__(self, loader: Callable[[], Any], what: str):
        self.__dict__["_loader"] = loader
        self.__dict__["_what"] = what
        self.__dict__["_obj"] = None
        self.__dict__["_pending"] = {}

    @property
    def loaded(self) -> bool:
        return self.__dict__["_obj"] is not None

    def resolve(self) -> Any:
        obj = self.__dict__["_obj"]
        if obj is None:
            obj = self.__dict__["_loader"]()
            for k, v in self.__dict__["_pending"].items():
                setattr(obj, k, v)
            self.__dict__["_obj"] = obj
        return obj

    def configure(self, **attrs: Any) -> None:
        if self.loaded:
            for k, v in attrs.items():
                setattr(self.__dict__["_obj"], k, v)
        else:
            self.__dict__["_pending"].update(attrs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __repr__(self) -> str:
        state = repr(self.__dict__["_obj"]) if self.loaded else "not loaded"
        return f"<{self.__dict__['_what']} ({state})>"
