"""The hooks an lrm_engine plugin can implement (pluggy hook specifications).

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, whose names are
the hook names below. Built-in plugins (``lrm_builtin``) and third-party plugins (entry points
in group ``lrm_engine``) use the same hooks. An implementation may accept a subset of a hook's
arguments.

Two families:

- **Registration hooks** are called exactly once per process, when the plugin manager is first
  built (:func:`lrm_engine.get_plugin_manager`). Each receives one registry (or Hydra's config
  store) and should only register things in it: cheap, no model loading, no I/O. The manager
  calls every plugin's implementation itself, one plugin at a time, so each registration is
  attributed to the plugin that made it (``lrm plugins`` shows it). Wrappers are not supported
  for registration hooks.
- **Lifecycle hooks** are called at coarse boundaries of a command (run start, end of a training
  or search iteration, run end) to observe progress: logging, tracking, checkpoint side-effects.
  They are never called inside a hot loop (no per-node, per-token or per-batch hook), and their
  return values are ignored.

Hook reference with examples: docs/plugins.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import pluggy

if TYPE_CHECKING:  # imported for annotations only: keep `import lrm_engine.hookspecs` light
    from hydra.core.config_store import ConfigStore
    from omegaconf import DictConfig

    from lrm_engine.components import Components
    from lrm_engine.registry import Registry

# The one project name: hook marker, plugin manager and entry-point group are all "lrm_engine".
PROJECT_NAME = "lrm_engine"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- registration hooks (called once, at plugin-manager start-up) -----------------------------


@hookspec
def lrm_register_search_algorithms(registry: Registry) -> None:
    """Register search algorithms (``SearchAlgorithm`` factories).

    Called once at start-up. Call ``registry.register(name, factory, description=...)`` for each
    algorithm; ``factory(**kwargs)`` receives the fields of the ``search=<name>`` config node
    other than ``name``. Do not build anything expensive here.
    """


@hookspec
def lrm_register_reward_models(registry: Registry) -> None:
    """Register reward models (``RewardModel`` factories: PRMs, ORMs, verifiers, judges).

    Called once at start-up. Call ``registry.register(name, factory, description=...)``; the
    factory receives the ``reward=<name>`` config node's fields (except ``name``) and should load
    weights only when it is called, never at registration.
    """


@hookspec
def lrm_register_objectives(registry: Registry) -> None:
    """Register training objectives (``Objective`` factories: SFT, DPO, GRPO, ...).

    Called once at start-up. Call ``registry.register(name, factory, description=...)``; the
    factory receives the ``objective=<name>`` config node's fields (except ``name``).
    """


@hookspec
def lrm_register_policies(registry: Registry) -> None:
    """Register policies (``Policy`` factories: models that expand tree nodes into steps).

    Called once at start-up. Call ``registry.register(name, factory, description=...)``; the
    factory receives the ``policy=<name>`` config node's fields (except ``name``) and should load
    the model only when it is called.
    """


@hookspec
def lrm_register_tasks(registry: Registry) -> None:
    """Register tasks (``Task`` factories: problems, prompt format, step convention, grader).

    Called once at start-up. Call ``registry.register(name, factory, description=...)``; the
    factory receives the ``task=<name>`` config node's fields (except ``name``).
    """


@hookspec
def lrm_register_annotators(registry: Registry) -> None:
    """Register annotators (process/outcome labelling: Monte-Carlo rollouts, OmegaPRM, judges).

    Called once at start-up. Call ``registry.register(name, factory, description=...)``; the
    factory receives the ``annotate=<name>`` config node's fields (except ``name``).
    """


@hookspec
def lrm_register_configs(config_store: ConfigStore) -> None:
    """Add Hydra config options (typed dataclass schemas) for the components you register.

    Called once at start-up, after every component registration hook, with Hydra's
    ``ConfigStore.instance()``. Either store a user-facing option directly::

        config_store.store(group="task", name="countdown", node=CountdownConfig)

    or store a schema that a YAML option file in the package's conf/ refers to::

        config_store.store(group="schema/task", name="arith", node=ArithConfig)

    Every option node has a ``name: str`` field holding the registry name of its component;
    the other fields are the keyword arguments of that component's factory.
    """


# --- lifecycle hooks (coarse boundaries only) -------------------------------------------------


@hookspec
def lrm_run_start(cfg: DictConfig, components: Components) -> None:
    """A command is about to run.

    Called once per run (once per job of a ``-m`` multirun), after the configuration is composed
    and the components are built, before any work. ``cfg`` is the composed configuration
    (read-only by convention), ``components`` the resolved components. Use it to open a tracker
    run, log the config, or check resources. Do not mutate the components.
    """


@hookspec
def lrm_iteration_end(iteration: int, metrics: Mapping[str, float]) -> None:
    """One outer iteration finished (a training step/epoch, or a search round over a dataset).

    Called at the end of each outer iteration, never per node, token or model call.
    ``iteration`` counts from 0; ``metrics`` maps metric names to scalars for that iteration.
    Use it to log or plot progress. Must be cheap: the run waits for it.
    """


@hookspec
def lrm_run_end(cfg: DictConfig, results: Mapping[str, Any]) -> None:
    """A command finished successfully.

    Called once per run with the composed ``cfg`` and the command's ``results`` (the metrics
    or summary it reports, JSON-serialisable). Use it to close a tracker run or upload artifacts.
    Not called when the run fails.
    """
