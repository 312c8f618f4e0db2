"""Typed configuration schemas (dataclasses stored in Hydra's ConfigStore).

Every option of every config group is typed by a dataclass. Component groups (task, policy,
reward, search, objective, annotate) derive from :class:`ComponentConfig`: field ``name`` is
the registry name of the component, the other fields are its factory's keyword arguments.

Two ways to provide an option:

- a YAML file ``conf/<group>/<option>.yaml`` shipped in the package, starting with
  ``defaults: [/schema/<group>/<option>@_here_, _self_]``; its schema is stored at group
  ``schema/<group>``, name ``<option>`` (not user-facing);
- a dataclass stored directly as the option: ``store(group="task", name="countdown", node=...)``.

This module defines the base schemas, the ``kernels`` and ``runtime`` schemas, and the
``schema/*`` convention. It imports nothing heavy (no torch).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import MISSING

if TYPE_CHECKING:
    from hydra.core.config_store import ConfigStore

# Config group of each kind of component (the kind is the registry, see lrm_engine.registry).
COMPONENT_GROUPS: dict[str, str] = {
    "task": "task",
    "policy": "policy",
    "reward": "reward",
    "search": "search",
    "objective": "objective",
    "annotate": "annotator",
}
# Every user-facing config group, in display order.
GROUPS: tuple[str, ...] = tuple(COMPONENT_GROUPS) + ("kernels", "runtime", "executor", "pipeline")
# Schemas that YAML options refer to live under this group prefix; they are not options.
SCHEMA_PREFIX = "schema"


def schema_group(group: str) -> str:
    """The ConfigStore group holding the schemas of ``group``'s YAML options."""
    return f"{SCHEMA_PREFIX}/{group}"


# --- component bases --------------------------------------------------------------------------


@dataclass
class ComponentConfig:
    """Base of every component option: ``name`` picks the registered factory."""

    # Registry name of the component; the remaining fields are its factory's keyword arguments.
    name: str = MISSING


@dataclass
class TaskConfig(ComponentConfig):
    """Base schema of ``task`` options."""


@dataclass
class PolicyConfig(ComponentConfig):
    """Base schema of ``policy`` options."""


@dataclass
class RewardConfig(ComponentConfig):
    """Base schema of ``reward`` options."""


@dataclass
class SearchConfig(ComponentConfig):
    """Base schema of ``search`` options."""


@dataclass
class ObjectiveConfig(ComponentConfig):
    """Base schema of ``objective`` options."""


@dataclass
class AnnotatorConfig(ComponentConfig):
    """Base schema of ``annotate`` options."""


# --- kernels ----------------------------------------------------------------------------------


class KernelBackend(str, enum.Enum):
    """The tree-op kernel implementations (lrm_engine.ops)."""

    # Pick per device: the C++ kernels on CPU, Triton on CUDA; reference when nothing is built.
    auto = "auto"
    # Pure-torch reference ops (the specification; always available).
    reference = "reference"
    # C++ CPU kernels from the compiled extension lrm_engine._C.
    cpp = "cpp"
    # Triton kernels (CUDA; CPU only under TRITON_INTERPRET=1).
    triton = "triton"
    # Hand-written CUDA C++ kernels (built with -DLRM_ENGINE_CUDA=ON).
    cuda = "cuda"


@dataclass
class KernelsConfig:
    """Schema of ``kernels`` options: which tree-op backend to use."""

    # Entry of the internal "kernels" registry that resolves the backend ("ops": lrm_engine.ops).
    name: str = "ops"
    # Backend to force; asking for one that was not built fails and names those that were.
    backend: KernelBackend = KernelBackend.auto


# --- runtime ----------------------------------------------------------------------------------


class Device(str, enum.Enum):
    """Where tensors and models live."""

    # CUDA when a GPU is visible, else CPU.
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, enum.Enum):
    """Floating-point type for models and activations."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@dataclass
class RuntimeConfig:
    """Schema of ``runtime`` options: process-wide settings, not a component."""

    # Seed of every random generator the run uses (python, numpy, torch, task generators).
    seed: int = 0
    # Device: "auto" (CUDA if available, else CPU), "cpu" or "cuda".
    device: Device = Device.auto
    # Directory for results, traces and checkpoints (created on demand).
    output_dir: str = "outputs"
    # CPU threads for torch and the C++ kernels; 0 keeps the library default.
    num_threads: int = 0
    # Floating-point type of models: float32, bfloat16 or float16.
    dtype: DType = DType.float32
    # Show progress bars on stderr.
    progress: bool = True
    # Resume under another configuration: move the old results aside (<file>.replaced-<n>)
    # and start afresh, instead of refusing (results are never resumed across configs).
    overwrite: bool = False


def store_core_schemas(config_store: ConfigStore) -> None:
    """Store the schemas the engine itself owns (``schema/runtime/default``).

    Called by the plugin manager before the plugins' ``lrm_register_configs`` hooks.
    """
    config_store.store(group=schema_group("runtime"), name="default", node=RuntimeConfig)
    from lrm_engine.executor.config import store_executor_schemas

    store_executor_schemas(config_store)
    from lrm_engine.pipeline import PipelineConfig

    config_store.store(group=schema_group("pipeline"), name="default", node=PipelineConfig)
