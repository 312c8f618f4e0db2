"""Schemas of the ``executor`` config group: where the per-problem work of a verb runs.

``executor=local`` (the default) runs it in this process; ``executor=ray`` spreads it over Ray
actors (lrm_engine/executor/ray_executor.py). These are runtime knobs: they change where and how
fast records are made, never what they say, so they are not part of a results fingerprint
(lrm_engine/fingerprint.py hashes only the nodes named in ``SHAPING``). Imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ExecutorConfig:
    """Base schema of ``executor`` options."""

    # Which executor runs the batches: local (this process) or ray (Ray actors).
    name: str = "local"


@dataclass
class LocalExecutorConfig(ExecutorConfig):
    """``executor=local``: today's in-process loop, batch after batch."""

    # Registry name of the executor.
    name: str = "local"


@dataclass
class RayExecutorConfig(ExecutorConfig):
    """``executor=ray``: batches of problems handed to ``num_workers`` Ray actors."""

    # Registry name of the executor.
    name: str = "ray"
    # Ray cluster to use: null starts a local Ray on this machine; "auto" joins the cluster this
    # machine is part of (`ray start --head` / `ray start --address=...`); "host:port" or
    # "ray://host:port" (Ray Client) joins that one.
    address: Optional[str] = None
    # Ray actors (workers); each builds the components (loads the models) once.
    num_workers: int = 2
    # CPUs reserved per worker; its torch threads are set to this (at least 1).
    num_cpus: float = 1.0
    # GPUs reserved per worker (0: CPU only; 1 gives each worker its own GPU, 0.5 two per GPU).
    num_gpus: float = 0.0
    # Workers that die mid-run are replaced, their batch handed to another worker, up to this
    # many times per run; one more death stops the run (finished records stay written).
    max_restarts: int = 3


def store_executor_schemas(config_store) -> None:
    """Store ``schema/executor/{local,ray}`` (the YAML options conf/executor/*.yaml use them)."""
    config_store.store(group="schema/executor", name="local", node=LocalExecutorConfig)
    config_store.store(group="schema/executor", name="ray", node=RayExecutorConfig)
