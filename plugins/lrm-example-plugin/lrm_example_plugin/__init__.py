"""lrm-example-plugin: a third-party lrm_engine plugin (entry point ``example``).

It implements two registration hooks: ``lrm_register_tasks`` (the ``countdown`` task) and
``lrm_register_configs`` (the config option ``task=countdown``, stored directly in group
"task"). Nothing heavy is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lrm_engine.hookspecs import hookimpl

from lrm_example_plugin.countdown import CountdownConfig, CountdownTask

if TYPE_CHECKING:
    from hydra.core.config_store import ConfigStore

    from lrm_engine.registry import Registry

__version__ = "0.1.0"
__all__ = ["CountdownConfig", "CountdownTask"]


@hookimpl
def lrm_register_tasks(registry: Registry) -> None:
    """Register the ``countdown`` task."""
    registry.register(
        "countdown",
        CountdownTask,
        description="Countdown: reach a target from given integers with + - * (exact verifier)",
    )


@hookimpl
def lrm_register_configs(config_store: ConfigStore) -> None:
    """Store the option ``task=countdown`` (typed by :class:`CountdownConfig`)."""
    config_store.store(group="task", name="countdown", node=CountdownConfig)
