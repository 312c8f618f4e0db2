"""Build the components of a run from a composed config, or take them as Python objects.

:func:`build` resolves each component group of the config through its registry:
``registry.create(node.name, **other_fields_as_plain_python)``. Any component can instead be
constructed directly and passed in (``build(cfg, task=MyTask())``), or a :class:`Components`
can be made by hand with no configuration at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrm_engine.config import COMPONENT_GROUPS

if TYPE_CHECKING:
    from omegaconf import DictConfig


@dataclass
class Components:
    """The resolved components of a run; ``None`` for a group the config leaves out."""

    # Task: problems, prompt format, step convention, grader (lrm_engine.core.interfaces.Task).
    task: Any = None
    # Policy: expands tree nodes into candidate steps.
    policy: Any = None
    # Reward model: scores steps or answers.
    reward: Any = None
    # Search algorithm: decides what to expand, select and return.
    search: Any = None
    # Training objective.
    objective: Any = None
    # Annotator: labels traces with process/outcome supervision.
    annotator: Any = None
    # Tree-op backend object from lrm_engine.ops.get_backend.
    kernels: Any = None

    def replace(self, **changes: Any) -> Components:
        """A copy with some components replaced."""
        return dataclasses.replace(self, **changes)


COMPONENT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Components))


def node_to_kwargs(node: Any, where: str) -> tuple[str, dict[str, Any]]:
    """Split a config node into (registry name, factory kwargs as plain Python values)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        data = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    elif isinstance(node, dict):
        data = dict(node)
    else:
        raise TypeError(f"config node {where} must be a mapping, got {type(node).__name__}")
    assert isinstance(data, dict)
    name = data.pop("name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"config node {where} has no 'name' (the registry name of its component); "
            f"every option's schema must define `name: str`"
        )
    return name, {str(k): v for k, v in data.items()}


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; other values unchanged."""
    device = str(getattr(device, "value", device))
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build(cfg: DictConfig | None = None, **components: Any) -> Components:
    """Resolve the components of ``cfg`` through the registries.

    Keyword arguments (``task=``, ``policy=``, ``reward=``, ``search=``, ``objective=``,
    ``annotator=``, ``kernels=``) are used as they are instead of building that group from
    the config; ``build(task=my_task)`` with no config builds nothing else.
    Unknown names fail with the registered ones listed.
    """
    unknown = sorted(set(components) - set(COMPONENT_FIELDS))
    if unknown:
        raise TypeError(
            f"build() got unknown component(s) {unknown}; valid: {', '.join(COMPONENT_FIELDS)}"
        )
    out: dict[str, Any] = dict(components)
    if cfg is None:
        return Components(**out)

    from lrm_engine.plugin_manager import registries

    regs = registries()
    for group, kind in COMPONENT_GROUPS.items():
        if kind in out or cfg.get(group) is None:
            continue
        name, kwargs = node_to_kwargs(cfg[group], group)
        out[kind] = regs[kind].create(name, **kwargs)
    if "kernels" not in out and cfg.get("kernels") is not None:
        name, kwargs = node_to_kwargs(cfg.kernels, "kernels")
        runtime = cfg.get("runtime")
        device = runtime.get("device", "auto") if runtime is not None else "auto"
        out["kernels"] = regs["kernels"].create(name, device=resolve_device(device), **kwargs)
    return Components(**out)
