"""``lrm evaluate``: run the task's own evaluator and report its metrics.

A task that can evaluate itself (for instance against a stored set of solutions or through the
components it is given) defines ``evaluate(cfg) -> dict[str, float]``; without one there is
nothing honest to report, so the verb is "not available yet" for that task.

Executors: an evaluator that runs models over problems takes ``evaluate(cfg, executor=...)``
and hands its batches to that executor (lrm_engine/executor/: ``executor=local`` in-process,
``executor=ray`` over Ray actors). One without that parameter runs in-process; asking it for
``executor=ray`` is refused with one line rather than silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from lrm_engine.components import Components


def unavailable(cfg: DictConfig, components: Components) -> str | None:
    """Why evaluate cannot run: no task, or a task without an ``evaluate(cfg)`` method."""
    task = components.task
    if task is None:
        return "no task selected (add task=<option>)"
    if not callable(getattr(task, "evaluate", None)):
        name = cfg.task.name if cfg.get("task") is not None else type(task).__name__
        return (f"task {name!r} has no evaluate(cfg) method; evaluating it needs a policy and "
                f"search (models issue, search issue)")
    return None


def main(cfg: DictConfig, components: Components) -> Mapping[str, Any]:
    """The task's metrics, as returned by ``task.evaluate(cfg[, executor=...])``, or by
    ``task.evaluate_with_reward(cfg, reward)`` when a reward is configured and the task has it."""
    import inspect

    from lrm_engine.errors import UserError
    from lrm_engine.executor import make_executor

    reward, task = getattr(components, "reward", None), components.task
    by_reward = reward is not None and callable(getattr(task, "evaluate_with_reward", None))
    try:
        takes_executor = "executor" in inspect.signature(task.evaluate).parameters
    except (TypeError, ValueError):  # no signature to read: call it the plain way
        takes_executor = False
    with make_executor(cfg) as executor:
        if executor.remote and (by_reward or not takes_executor):
            name = cfg.task.name if cfg.get("task") is not None else type(task).__name__
            raise UserError(f"executor={executor.name}: task {name} evaluates in this process (its "
                            f"evaluate takes no executor); use executor=local")
        if by_reward:
            metrics = task.evaluate_with_reward(cfg, reward)
        elif takes_executor:
            metrics = task.evaluate(cfg, executor=executor)
        else:
            metrics = task.evaluate(cfg)
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"{type(task).__name__}.evaluate(cfg) must return a mapping of metrics, "
            f"got {type(metrics).__name__}"
        )
    return dict(metrics)
