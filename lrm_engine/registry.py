"""Named component registries: one :class:`Registry` per kind of component.

Plugins fill the registries from their registration hooks (see :mod:`lrm_engine.hookspecs`);
the engine resolves configuration nodes through them (``registry.create(node.name, **rest)``).
A registry remembers which plugin registered each name, so a duplicate name is reported with
both plugins, and an unknown name is answered with the list of known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

# The public kinds of component, in the order they are listed. "kernels" is internal: it holds
# the kernel-backend resolver and is not shown in ``lrm plugins --json``'s "registries".
PUBLIC_KINDS: tuple[str, ...] = ("search", "reward", "objective", "policy", "task", "annotator")
INTERNAL_KINDS: tuple[str, ...] = ("kernels",)
KINDS: tuple[str, ...] = PUBLIC_KINDS + INTERNAL_KINDS

# Human-readable noun per kind, for error messages.
KIND_NOUNS: dict[str, str] = {
    "search": "search algorithm",
    "reward": "reward model",
    "objective": "objective",
    "policy": "policy",
    "task": "task",
    "annotator": "annotator",
    "kernels": "kernel resolver",
}


class RegistryError(Exception):
    """Base class of the registry's errors."""


class DuplicateComponentError(RegistryError, ValueError):
    """A name was registered twice in one registry."""


class UnknownComponentError(RegistryError, LookupError):
    """A name that no plugin registered was asked for.

    The message lists the names that are registered. ``known`` holds them as a tuple.
    """

    def __init__(self, message: str, *, kind: str, name: str, known: tuple[str, ...]) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.known = known


@dataclass(frozen=True)
class RegistryEntry:
    """One registered component."""

    # The name configurations use to ask for it (``name:`` field of a config node).
    name: str
    # The plugin that registered it (pluggy plugin name, e.g. "builtin.tasks" or "example").
    plugin: str
    # Called with the node's other fields as keyword arguments to build the component.
    factory: Callable[..., Any]
    # One line for ``lrm plugins``.
    description: str = ""


class Registry:
    """The components of one kind, by name.

    The plugin manager sets :attr:`current_plugin` before it calls each plugin's registration
    hook, so every registration is attributed to the plugin that made it.
    """

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}; kinds are {', '.join(KINDS)}")
        self.kind = kind
        self._entries: dict[str, RegistryEntry] = {}
        # Name of the plugin whose hook is running; "<direct>" when code registers by hand.
        self.current_plugin: str = "<direct>"

    @property
    def noun(self) -> str:
        """What one entry is called in messages ("search algorithm", "task", ...)."""
        return KIND_NOUNS[self.kind]

    def register(self, name: str, factory: Callable[..., Any], *, description: str = "") -> None:
        """Register ``factory`` under ``name``.

        Raises :class:`DuplicateComponentError` naming both plugins when ``name`` is taken.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.noun} names must be non-empty strings, got {name!r}")
        if not callable(factory):
            raise TypeError(f"the factory of {self.noun} {name!r} is not callable: {factory!r}")
        plugin = self.current_plugin
        if name in self._entries:
            first = self._entries[name].plugin
            raise DuplicateComponentError(
                f"{self.noun} {name!r} is registered twice: first by plugin {first!r}, then by "
                f"plugin {plugin!r}. Rename one of them, or disable one plugin with "
                f"LRM_ENGINE_DISABLE_PLUGINS={plugin}"
            )
        self._entries[name] = RegistryEntry(name, plugin, factory, description)

    def get(self, name: str) -> RegistryEntry:
        """The entry registered under ``name``; :class:`UnknownComponentError` if there is none."""
        try:
            return self._entries[name]
        except KeyError:
            known = tuple(self.names())
            listed = ", ".join(known) if known else "none (no installed plugin registers one)"
            raise UnknownComponentError(
                f"unknown {self.noun} {name!r}; registered {self.kind} names: {listed}. "
                f"Run `lrm plugins` to see which plugin provides what.",
                kind=self.kind,
                name=name,
                known=known,
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the component registered under ``name`` by calling its factory with ``kwargs``."""
        entry = self.get(name)
        try:
            return entry.factory(**kwargs)
        except TypeError as e:
            raise TypeError(
                f"{self.noun} {name!r} (plugin {entry.plugin!r}) rejected its arguments "
                f"{sorted(kwargs)}: {e}. Check that its config schema matches its factory."
            ) from e

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[tuple[str, str, str]]:
        """``(name, plugin, description)`` for every entry, sorted by name."""
        return [(e.name, e.plugin, e.description) for e in sorted(self._entries.values(),
                                                                   key=lambda e: e.name)]

    def by_plugin(self, plugin: str) -> list[str]:
        """The names registered by one plugin, sorted."""
        return sorted(n for n, e in self._entries.items() if e.plugin == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
