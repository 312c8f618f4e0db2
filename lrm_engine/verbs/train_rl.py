"""``lrm train`` recipes of the RL objectives (registered into ``lrm_engine.verbs.train.RECIPES``).

- ``rollout`` (``grpo``, ``ppo``) and ``vine_rollout`` (``vineppo``): on-policy training from the
  SFT policy — ``objective.model.init``, null meaning the embedded default policy that ``lrm run``
  trained (:func:`lrm_engine.default_models.default_model_dir`) — with verifier rewards
  (``task.grade``) plus, when ``objective.prm.path`` is set, the PRM's score; see
  :func:`lrm_engine.train.rl_run.train_rollout`. Greedy accuracy before / after on
  ``objective.eval`` is printed and written to ``<run_dir>/eval.json``.
- ``rest_mcts``: ReST-MCTS* self-training iterations, :func:`lrm_engine.train.rest_mcts.train_rest_mcts`.

Resume: the one trainer's checkpoints (the rollout source's position included) — rerunning the
same command continues the same run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def resolve_init(path, kind: str = "policy", option: str = "objective.model.init") -> str:
    """A model folder: ``path``, or the embedded default's (a clear usage error when missing)."""
    from lrm_engine.cli import UsageError
    from lrm_engine.default_models import resolve_model_path
    from lrm_engine.models.loading import ModelLoadError

    try:
        return resolve_model_path(path or None, kind, option)
    except ModelLoadError as e:
        raise UsageError(str(e), show_usage=False) from e


def _node(cfg, key: str) -> dict:
    from omegaconf import OmegaConf

    n = cfg.get(key)
    return {} if n is None else OmegaConf.to_container(n, resolve=True)


def recipe_rollout(cfg, components, run_dir: Path) -> dict[str, Any]:
    """``grpo`` / ``ppo`` / ``vineppo`` from the SFT policy (module docstring)."""
    from lrm_engine.train.rl_run import train_rollout
    from lrm_engine.verbs.train import _hook_callback, _summary, _train_config

    o = cfg.objective
    init = resolve_init(o.model.init)
    ev = _node(o, "eval")
    result = train_rollout(run_dir, task=components.task, objective=components.objective,
                           model=init, rollout=_node(o, "rollout"), train=_train_config(cfg),
                           prm=_node(o, "prm"), evaluate=ev if ev else None,
                           callbacks=[_hook_callback()])
    out = _summary(str(o.name), str(cfg.task.name), result)
    out["init"] = init
    for k in ("reward", "accuracy", "kl", "clip_ratio", "clip_frac", "value_clip_frac"):
        v = result.metrics.get(f"objective/{k}")
        if v is not None:
            out[k] = v
    e = result.metrics.get("eval")
    if e:
        out["eval"] = e
        print(f"lrm train: greedy accuracy {e['before']['accuracy']:.3f} -> "
              f"{e['after']['accuracy']:.3f} ({e['after']['problems']} {e['after']['split']} "
              f"problems)", file=sys.stderr)
    return out


def recipe_rest_mcts(cfg, components, run_dir: Path) -> dict[str, Any]:
    """ReST-MCTS* self-training (see :mod:`lrm_engine.train.rest_mcts`)."""
    from lrm_engine.components import resolve_device
    from lrm_engine.train.rest_mcts import train_rest_mcts

    o = cfg.objective
    init = resolve_init(o.model.init)
    prm_init = resolve_init(o.prm.init, "prm", "objective.prm.init")
    settings = {k: v for k, v in _node(cfg, "objective").items()
                if k not in ("name", "run_name", "model", "prm")}
    settings["policy_lr"] = settings.pop("policy_lr", 1e-4)
    res = train_rest_mcts(run_dir, task=components.task, policy=init, prm=prm_init,
                          seed=int(cfg.runtime.seed), device=str(resolve_device(cfg.runtime.device)),
                          progress=bool(cfg.runtime.progress), **settings)
    res.update(objective="rest_mcts", task=str(cfg.task.name), init=init, prm_init=prm_init)
    return res
