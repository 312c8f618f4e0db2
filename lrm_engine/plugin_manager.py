"""The plugin manager: finds plugins, runs their registration hooks once, keeps the registries.

Start-up, in order (:func:`get_plugin_manager`, cached per process):

1. a ``pluggy.PluginManager("lrm_engine")`` with the hook specifications of
   :mod:`lrm_engine.hookspecs`;
2. plugins named in ``LRM_ENGINE_DISABLE_PLUGINS`` (comma-separated plugin names, built-ins
   included) are blocked;
3. the built-in plugins listed in ``lrm_builtin.BUILTIN_PLUGINS`` are imported and registered
   under their names;
4. third-party plugins are loaded from the ``lrm_engine`` entry-point group;
5. ``check_pending()`` rejects implementations of unknown hooks;
6. every registration hook is run once, plugin by plugin, filling one :class:`Registry` per
   kind (each entry attributed to its plugin), then ``lrm_register_configs`` with Hydra's
   ``ConfigStore``.

:func:`reset_plugin_manager` forgets all of it (tests), including the config nodes plugins
stored.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import pluggy

from lrm_engine import hookspecs
from lrm_engine.hookspecs import PROJECT_NAME
from lrm_engine.registry import KINDS, PUBLIC_KINDS, Registry, RegistryError

# Environment variable: comma-separated plugin names to block (e.g. "example,builtin.tasks").
DISABLE_ENV = "LRM_ENGINE_DISABLE_PLUGINS"
# Entry-point group third-party plugins declare themselves in.
ENTRY_POINT_GROUP = PROJECT_NAME
# Plugin name under which the engine itself registers (the internal kernels resolver).
CORE_PLUGIN = "lrm_engine"

# Registration hook of each registry kind.
REGISTRATION_HOOKS: dict[str, str] = {
    "search": "lrm_register_search_algorithms",
    "reward": "lrm_register_reward_models",
    "objective": "lrm_register_objectives",
    "policy": "lrm_register_policies",
    "task": "lrm_register_tasks",
    "annotator": "lrm_register_annotators",
}
CONFIG_HOOK = "lrm_register_configs"


class PluginError(RuntimeError):
    """A plugin failed to load or failed inside a registration hook."""


@dataclass
class PluginInfo:
    """What ``lrm plugins`` shows for one plugin."""

    # Plugin name (built-in: its BUILTIN_PLUGINS key; entry point: the entry point's name).
    name: str
    # Distribution version for entry-point plugins; lrm_engine's version for built-ins.
    version: str
    # Distribution (package) name; "lrm_engine" for built-ins.
    distribution: str
    # Registry kind -> names this plugin registered there (every public kind present).
    registers: dict[str, list[str]] = field(default_factory=dict)
    # Config options ("group/option") this plugin stored; schemas shown under their group.
    configs: list[str] = field(default_factory=list)


class LrmPluginManager(pluggy.PluginManager):
    """A pluggy PluginManager that also owns the component registries.

    ``hook`` is the usual pluggy relay (``pm.hook.lrm_run_start(cfg=..., components=...)``).
    """

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        # Registry kind -> Registry (public kinds and the internal "kernels").
        self.registries: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}
        # Plugins blocked through LRM_ENGINE_DISABLE_PLUGINS.
        self.disabled: list[str] = []
        # Built-in plugins whose module is not present in this checkout/installation.
        self.missing_builtins: dict[str, str] = {}
        # Config options stored per plugin ("group/name").
        self._configs: dict[str, list[str]] = {}

    # --- start-up -----------------------------------------------------------------------------

    def load_builtins(self, builtins: dict[str, str]) -> None:
        """Import and register each built-in plugin module (name -> module path)."""
        for name, module_path in builtins.items():
            if self.is_blocked(name):
                continue
            if importlib.util.find_spec(module_path) is None:
                self.missing_builtins[name] = module_path
                warnings.warn(
                    f"built-in plugin {name!r}: module {module_path!r} is not present; skipped",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            try:
                module = importlib.import_module(module_path)
            except Exception as e:
                raise PluginError(
                    f"built-in plugin {name!r} ({module_path}) failed to import: {e}. "
                    f"Disable it with {DISABLE_ENV}={name}"
                ) from e
            self.register(module, name=name)

    def run_registration_hooks(self) -> None:
        """Run every registration hook once, attributing each entry to its plugin."""
        from lrm_engine.backend_resolver import resolve_kernels

        kernels = self.registries["kernels"]
        kernels.current_plugin = CORE_PLUGIN
        kernels.register("ops", resolve_kernels,
                         description="tree-op backends of lrm_engine.ops (get_backend)")
        for kind, hook_name in REGISTRATION_HOOKS.items():
            registry = self.registries[kind]
            for impl in self._plain_impls(hook_name):
                registry.current_plugin = impl.plugin_name
                try:
                    self._call_impl(impl, hook_name, registry=registry)
                finally:
                    registry.current_plugin = "<direct>"

    def run_config_hook(self) -> None:
        """Store the engine's schemas, then run ``lrm_register_configs`` once per plugin."""
        from hydra.core.config_store import ConfigStore

        from lrm_engine.config import store_core_schemas

        store = ConfigStore.instance()
        before = _stored_paths(store)
        store_core_schemas(store)
        self._configs[CORE_PLUGIN] = sorted(_stored_paths(store) - before)
        for impl in self._plain_impls(CONFIG_HOOK):
            before = _stored_paths(store)
            self._call_impl(impl, CONFIG_HOOK, config_store=store)
            self._configs.setdefault(impl.plugin_name, []).extend(
                sorted(_stored_paths(store) - before))

    def _plain_impls(self, hook_name: str) -> list[Any]:
        """The hook's implementations in registration order (wrappers are not supported)."""
        caller = getattr(self.hook, hook_name)
        return [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]

    @staticmethod
    def _call_impl(impl: Any, hook_name: str, **kwargs: Any) -> None:
        """Call one implementation with the arguments it asks for; name the plugin on failure."""
        args = {a: kwargs[a] for a in impl.argnames}
        try:
            impl.function(**args)
        except RegistryError:
            raise
        except Exception as e:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(e).__name__}: {e}. "
                f"Disable it with {DISABLE_ENV}={impl.plugin_name}"
            ) from e

    # --- queries ------------------------------------------------------------------------------

    def plugin_infos(self, include_core: bool = False) -> list[PluginInfo]:
        """Every registered plugin, in registration order (built-ins, then entry points).

        ``include_core`` adds the engine itself (plugin name "lrm_engine"), which registers the
        internal kernels resolver and the runtime schema.
        """
        from lrm_engine import __version__

        dists = {self.get_name(p): d for p, d in self.list_plugin_distinfo()}
        infos: list[PluginInfo] = []
        names = [CORE_PLUGIN] if include_core else []
        names += [n for n, p in self.list_name_plugin() if p is not None]
        for name in names:
            dist = dists.get(name)
            registers = {k: self.registries[k].by_plugin(name) for k in PUBLIC_KINDS}
            configs = [c.removeprefix("schema/").removesuffix(".yaml")
                       for c in self._configs.get(name, [])]
            if name == CORE_PLUGIN:
                registers["kernels"] = self.registries["kernels"].by_plugin(name)
            infos.append(PluginInfo(
                name=name,
                version=str(dist.version) if dist is not None else __version__,
                distribution=str(dist.project_name) if dist is not None else "lrm_engine",
                registers=registers,
                configs=sorted(set(configs)),
            ))
        return infos


def _stored_paths(store: Any) -> set[str]:
    """Every node path in a ConfigStore ("group/sub/name.yaml")."""
    out: set[str] = set()

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            else:
                out.add(f"{prefix}{k}")

    walk(store.repo, "")
    return out


def _remove_stored(store: Any, paths: list[str]) -> None:
    """Delete nodes (``_stored_paths`` form) from a ConfigStore, and groups left empty."""
    for path in paths:
        *groups, leaf = path.split("/")
        chain = [store.repo]
        for g in groups:
            nxt = chain[-1].get(g)
            if not isinstance(nxt, dict):
                break
            chain.append(nxt)
        else:
            chain[-1].pop(leaf, None)
            for parent, g in zip(reversed(chain[:-1]), reversed(groups)):
                if parent.get(g) == {}:
                    del parent[g]


def disabled_plugin_names() -> list[str]:
    """Plugin names from ``LRM_ENGINE_DISABLE_PLUGINS`` (blank entries ignored)."""
    return [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]


_lock = threading.RLock()
_manager: LrmPluginManager | None = None


def _create() -> LrmPluginManager:
    """Build a manager: block, register built-ins and entry points, check, run hooks."""
    from lrm_builtin import BUILTIN_PLUGINS

    pm = LrmPluginManager()
    for name in disabled_plugin_names():
        pm.set_blocked(name)
        pm.disabled.append(name)
    pm.load_builtins(BUILTIN_PLUGINS)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as e:
        raise PluginError(
            f"a plugin from entry-point group {ENTRY_POINT_GROUP!r} failed to load: "
            f"{type(e).__name__}: {e}. Uninstall it, or block it with {DISABLE_ENV}=<name> "
            f"(`pip show` / the traceback name the distribution)"
        ) from e
    pm.check_pending()
    pm.run_registration_hooks()
    pm.run_config_hook()
    return pm


def get_plugin_manager() -> LrmPluginManager:
    """The process's plugin manager, built on first use (see the module docstring)."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = _create()
        return _manager


def reset_plugin_manager() -> None:
    """Forget the cached manager and the config nodes its plugins stored (for tests).

    The next :func:`get_plugin_manager` rebuilds everything, re-reading
    ``LRM_ENGINE_DISABLE_PLUGINS`` and the installed entry points.
    """
    global _manager
    with _lock:
        if _manager is not None:
            from hydra.core.config_store import ConfigStore

            for paths in _manager._configs.values():
                _remove_stored(ConfigStore.instance(), paths)
        _manager = None


def registries() -> dict[str, Registry]:
    """Registry kind -> :class:`Registry` (the public kinds and the internal "kernels")."""
    return get_plugin_manager().registries


def get_registry(kind: str) -> Registry:
    """The registry of one kind; a wrong kind names the valid ones."""
    regs = registries()
    if kind not in regs:
        raise KeyError(f"unknown registry kind {kind!r}; kinds are {', '.join(regs)}")
    return regs[kind]


def plugin_infos(include_core: bool = False) -> list[PluginInfo]:
    """Every plugin with its version and what it registers (see :class:`PluginInfo`)."""
    return get_plugin_manager().plugin_infos(include_core=include_core)

