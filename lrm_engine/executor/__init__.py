"""Executors: where the per-problem work of ``lrm search`` / ``annotate`` (and the ``lrm run``
annotate and sweep stages) runs.

A verb splits its job in two: a :class:`~lrm_engine.executor.work.Work` — build the components
once, then turn a batch of problems into finished records — and a *sink* on the driver that
writes each batch's records to the results file (resume, fingerprint: lrm_engine/core/results.py).
The executor hands the batches to the work and the results to the sink:

- ``executor=local`` (:class:`~lrm_engine.executor.local.LocalExecutor`, the default): in this
  process, batch after batch, with the components the verb already built.
- ``executor=ray`` (:class:`~lrm_engine.executor.ray_executor.RayExecutor`): ``num_workers``
  Ray actors each build the components from the composed config once, then take batches from a
  queue; the driver alone writes. A worker that dies has its batch handed to another (a new
  worker replaces it, up to ``max_restarts``): nothing lost, nothing written twice.

Records are the same either way: a problem's samples depend on ``(runtime.seed, problem id)``
only (lrm_engine/core/rng.py), not on which process searched it or what else was in its batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrm_engine.executor.work import BatchResult, RunReport, Work, chunks

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["BatchResult", "RunReport", "Work", "chunks", "make_executor", "executor_settings"]

# Fields of the ``executor`` node when the config has none (Python embedding of an old config).
LOCAL = {"name": "local"}


def executor_settings(cfg: DictConfig | None) -> dict[str, Any]:
    """The ``executor`` node as a plain dict (``{"name": "local"}`` when absent)."""
    from omegaconf import OmegaConf

    node = cfg.get("executor") if cfg is not None else None
    if node is None:
        return dict(LOCAL)
    return dict(OmegaConf.to_container(node, resolve=True))


def make_executor(cfg: DictConfig | None = None, **settings: Any):
    """The executor the config names (``executor.name``), or the one ``settings`` describe."""
    opts = dict(executor_settings(cfg) if not settings else {"name": "local", **settings})
    name = opts.pop("name", "local")
    if name == "local":
        from lrm_engine.executor.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from lrm_engine.executor.ray_executor import RayExecutor

        return RayExecutor(**opts)
    from lrm_engine.errors import UserError

    raise UserError(f"executor={name}: unknown executor; executors: local, ray")
