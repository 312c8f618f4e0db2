"""On-policy RL runs (``lrm train objective=grpo|ppo|vineppo``): the ``rollout`` recipe's engine.

    result = train_rollout(run_dir, task=task, objective=GRPOObjective(...), model=<folder>,
                           rollout=dict(prompts_per_batch=8, num_generations=8),
                           train=TrainConfig(...), prm=None, evaluate=dict(num_problems=100))

- Policy: a local model folder (``objective.model.init``; the train verb defaults it to the
  embedded default SFT policy of ``lrm run``, :func:`lrm_engine.default_models.default_model_dir`)
  with its tokenizer. The reference model of the KL term is a frozen copy of it.
- Rollouts: :class:`~lrm_engine.train.rl.GroupRolloutSource` (groups sampled by the current
  policy, verifier reward ``task.grade``) for ``grpo``/``ppo``;
  :class:`~lrm_engine.train.vine.VineRolloutSource` (trajectories + Monte-Carlo values through
  the tree engine) for ``vineppo``. The source's position is in every checkpoint, so an
  interrupted run resumes at the same step with the same prompts.
- Passes per rollout batch: the objective's ``rollout_passes`` (grpo's ``num_iterations``,
  ppo's / vineppo's ``num_ppo_epochs``); above 1 the source is wrapped in
  :class:`~lrm_engine.train.rl_replay.ReplaySource` (old log-probs / values from rollout time,
  each batch optimised on that many times, so the clip ranges act).
- PRM (optional, ``prm.path``; ``default``: the embedded default PRM): each completion's reward
  is ``verifier + prm.weight * min_step P(good)`` (the PRM's aggregate over the solution's steps).
- Logging: the objective's metrics (``reward``, ``kl``, the clipped shares ``clip_ratio`` /
  ``clip_frac`` / ``value_clip_frac``, ...) plus ``rollout_pass`` with several passes, plus ``accuracy`` (the verifier's
  share of correct completions in the batch), to TensorBoard (``objective/<metric>``) and the
  progress bar (the one trainer's).
- Evaluation: greedy accuracy (tree engine, :class:`GreedySearch` — the figure ``lrm run``
  reports) on ``evaluate.num_problems`` problems of ``evaluate.split``, before (the starting
  policy, cached in ``eval_before.json``) and after training; written to ``eval.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .sft import _coerce
from .trainer import TrainConfig, Trainer, TrainResult


@dataclass
class RolloutSettings:
    """How an on-policy run samples (see :class:`~lrm_engine.train.rl.GroupRolloutSource`)."""

    split: str = "train"
    num_prompts: int | None = 2000
    prompts_per_batch: int = 8
    num_generations: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 128
    # vineppo only: Monte-Carlo rollouts per state, step limits of the tree engine (also those
    # of tree_grpo's trees and of searched rollouts).
    mc_rollouts: int = 4
    max_steps: int = 10
    max_step_tokens: int = 24
    # grpo / ppo: a registered search (with search_args) and its PRM produce each group
    # (lrm_engine.train.rl_search_rollout); None: plain sampling.
    search: str | None = None
    search_args: dict | None = None
    search_prm: str | None = "default"
    # tree_grpo only: the tree's shape (lrm_engine.train.rl_tree.TreeRolloutSource).
    tree_width: int = 2
    branch_factor: int = 2
    branch_depth: int = 3
    branch_top: int = 0
    policy: str = "tree"


@dataclass
class EvalSettings:
    """Greedy accuracy before / after training."""

    enabled: bool = True
    split: str = "test"
    num_problems: int | None = 100
    max_steps: int = 10
    max_step_tokens: int = 24
    batch_size: int = 32


class MetricsObjective:
    """Wraps an objective: adds the batch's ``accuracy`` (and any ``batch['log']`` floats) to its
    metrics; every other attribute (the loop's optional hooks) is the wrapped objective's."""

    def __init__(self, inner):
        self.__dict__["inner"] = inner

    def loss(self, model, batch):
        loss, m = self.inner.loss(model, batch)
        m = dict(m)
        if isinstance(batch, Mapping):
            if batch.get("accuracy") is not None:
                m["accuracy"] = float(batch["accuracy"])
            for k, v in (batch.get("log") or {}).items():
                m[k] = float(v)
        return loss, m

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)


def load_policy(path: str | Path):
    """``(model, tokenizer)`` of a local policy folder (fp32, train mode)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from ..tokenization import load_tokenizer

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, torch_dtype=torch.float32)
    model.train()
    return model, load_tokenizer(path)


def prm_reward_fn(prm_dir: str | Path, task, weight: float = 1.0) -> Callable:
    """``reward_fn(examples, texts) -> [weight * min_step P(good)]`` with a ``prm_token`` PRM."""
    from .prm import load_prm_token, score_steps

    model, tok, pc = load_prm_token(prm_dir)

    def fn(examples: Sequence, texts: Sequence[str]) -> list[float]:
        sols = []
        for ex, t in zip(examples, texts):
            steps = task.step.split_steps(t) or [t]
            sols.append((task.prompt(ex.problem), steps))
        scores = score_steps(model, tok, sols, good_token_id=pc["good_token_id"],
                             bad_token_id=pc["bad_token_id"], step_tag=pc["step_tag"])
        out = []
        for s in scores:
            v = [x for x in s if x == x]
            out.append(weight * (min(v) if v else 0.0))
        return out

    return fn


def greedy_accuracy(model, tokenizer, task, *, split: str = "test", num_problems: int | None = 100,
                    max_steps: int = 10, max_step_tokens: int = 24, batch_size: int = 32) -> dict:
    """Greedy accuracy through the tree engine (HFPolicy + GreedySearch), graded by the task."""
    from ..core.engine import SearchContext
    from ..models.hf_policy import HFPolicy
    from .rl_search_rollout import build_search

    exs = []
    for i, ex in enumerate(task.examples(split)):
        if num_problems is not None and i >= num_problems:
            break
        exs.append(ex)
    was = model.training
    policy = HFPolicy(model, tokenizer, step=task.step, max_step_tokens=max_step_tokens,
                      kv_budget_mb=256)
    ctx = SearchContext(policy=policy, step=task.step, prompt=task.prompt, max_steps=max_steps)
    search = build_search("greedy")  # through the registry: the engine imports no plugin
    correct = 0
    t0 = time.perf_counter()
    try:
        for s in range(0, len(exs), batch_size):
            chunk = exs[s:s + batch_size]
            for ex, r in zip(chunk, search.run(ctx, [e.problem for e in chunk])):
                correct += bool(task.grade(ex, r.solution))
    finally:
        model.train(was)
    return {"accuracy": correct / max(len(exs), 1), "correct": correct, "problems": len(exs),
            "split": split, "wall_s": round(time.perf_counter() - t0, 2)}


def train_rollout(
    run_dir: str | Path,
    *,
    task,
    objective,
    model: str | Path,
    rollout: RolloutSettings | Mapping[str, Any] | None = None,
    train: TrainConfig | Mapping[str, Any] | None = None,
    prm: Mapping[str, Any] | None = None,
    evaluate: EvalSettings | Mapping[str, Any] | bool | None = None,
    callbacks: Sequence[Callable[[int, Mapping[str, float]], None]] = (),
) -> TrainResult:
    """Train a policy on-policy (module docstring); resumable. ``result.metrics['eval']`` holds
    ``{"before": ..., "after": ...}`` greedy accuracies when evaluated."""
    from . import distributed as dist_
    from .rl import GroupRolloutSource

    run_dir = Path(run_dir)
    ro = _coerce(RolloutSettings, rollout)
    check_rollout_settings(objective, ro)  # before any model work: one-line user errors
    train_cfg = _coerce(TrainConfig, train)
    ev = None if evaluate is False else _coerce(EvalSettings, None if evaluate is True else evaluate)
    if ev is not None and not ev.enabled:
        ev = None
    main = dist_.is_main()  # under torchrun: rank 0 alone evaluates and writes files
    if not main:
        ev = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    policy, tok = load_policy(model)
    derive_L = getattr(objective, "max_completion_length", "n/a") is None  # dr_grpo's L
    eval_kw = {} if ev is None else {k: v for k, v in asdict(ev).items() if k != "enabled"}
    before = None
    if ev is not None:
        bf = run_dir / "eval_before.json"
        if bf.is_file():
            before = json.loads(bf.read_text())
        else:
            before = greedy_accuracy(policy, tok, task, **eval_kw)
            bf.write_text(json.dumps(before, indent=1))
    reward_fn = None
    prm = dict(prm or {})
    if prm.get("path"):
        from ..default_models import resolve_model_path

        p = None if prm["path"] == "default" else prm["path"]
        reward_fn = prm_reward_fn(resolve_model_path(p, "prm", "objective.prm.path"), task,
                                  float(prm.get("weight", 1.0)))
    kind = getattr(objective, "batch_kind", "rollout")
    common = dict(split=ro.split, num_prompts=ro.num_prompts, prompts_per_batch=ro.prompts_per_batch,
                  num_generations=ro.num_generations, temperature=ro.temperature, seed=train_cfg.seed)
    if kind == "vine_rollout":
        from .vine import VineRolloutSource

        source = VineRolloutSource(policy, tok, task, mc_rollouts=ro.mc_rollouts,
                                   max_steps=ro.max_steps, max_step_tokens=ro.max_step_tokens,
                                   reward_fn=reward_fn, **common)
    else:
        source = (tree_or_search_source(objective, ro, policy, tok, task, reward_fn, common)
                  or GroupRolloutSource(policy, tok, task, max_new_tokens=ro.max_new_tokens,
                                        reward_fn=reward_fn, **common))
    if derive_L:
        objective.max_completion_length = int(getattr(source, "max_new_tokens", ro.max_new_tokens))
    passes = int(getattr(objective, "rollout_passes", 1))
    if passes > 1:  # num_iterations / num_ppo_epochs: old log-probs from rollout time
        from .rl_replay import ReplaySource

        source = ReplaySource(source, objective, policy, passes=passes, grad_accum=train_cfg.grad_accum,
                              precision=train_cfg.precision)
    if main:
        (run_dir / "run_config.json").write_text(json.dumps({
            "objective": getattr(objective, "name", None), "task": getattr(task, "name", None),
            "model": str(model), "rollout": asdict(ro), "train": asdict(train_cfg), "prm": prm,
            "eval": eval_kw}, indent=1, default=str))
    trainer = Trainer(policy, MetricsObjective(objective), source, train_cfg, run_dir, tokenizer=tok,
                      callbacks=callbacks)
    result = trainer.train()
    out = run_dir / "model"
    result.model_dir = str(out)
    trainer.save_model(out)
    totals = getattr(getattr(source, "source", source), "totals", None)
    if callable(totals):  # tree rollouts: tokens computed vs the i.i.d. equivalent, leaves
        result.metrics = dict(result.metrics) | {"rollout_totals": totals()}
    if not main:
        return result
    tok.save_pretrained(str(out))
    if ev is not None:
        af = run_dir / "eval.json"
        doc = json.loads(af.read_text()) if af.is_file() else {}
        if doc.get("steps") != result.steps:
            after = greedy_accuracy(policy, tok, task, **eval_kw)
            doc = {"before": before, "after": after, "steps": result.steps,
                   "gain": round(after["accuracy"] - before["accuracy"], 4)}
            af.write_text(json.dumps(doc, indent=1))
        result.metrics = dict(result.metrics) | {"eval": doc}
    (run_dir / "result.json").write_text(json.dumps(result.to_json() | {"losses": result.losses[-50:]},
                                                    indent=1, default=str))
    return result


def tree_or_search_source(objective, ro: RolloutSettings, policy, tok, task, reward_fn,
                          common: Mapping[str, Any]):
    """The rollout source of ``tree_grpo`` (groups sampled as trees) or of a searched rollout
    (``ro.search`` set, grpo / ppo); None: plain sampling (GroupRolloutSource)."""
    if getattr(objective, "rollout_source", None) == "tree":
        from .rl_tree import TreeRolloutSource

        kw = {k: v for k, v in common.items() if k != "num_generations"}
        return TreeRolloutSource(policy, tok, task, tree_width=ro.tree_width,
                                 branch_factor=ro.branch_factor, branch_depth=ro.branch_depth,
                                 branch_top=ro.branch_top, policy=ro.policy,
                                 max_steps=ro.max_steps, max_step_tokens=ro.max_step_tokens,
                                 shared_weight=getattr(objective, "shared_weight", "sqrt"),
                                 reward_fn=reward_fn, **kw)
    if ro.search:
        from .rl_search_rollout import SearchRolloutSource, build_search_prm

        kw = {k: v for k, v in common.items() if k != "num_generations"}
        dev = str(next(policy.parameters()).device)
        return SearchRolloutSource(policy, tok, task, search=ro.search, search_args=ro.search_args,
                                   reward_model=build_search_prm(ro.search_prm, dev),
                                   max_steps=ro.max_steps, max_step_tokens=ro.max_step_tokens,
                                   reward_fn=reward_fn, **kw)
    return None


def check_rollout_settings(objective, ro: RolloutSettings) -> None:
    """The tree shape (tree_grpo) and the search (rollout.search) a user chose: a
    :class:`~lrm_engine.errors.UserError` naming the field, the value and the fix."""
    from ..errors import UserError

    if getattr(objective, "rollout_source", None) == "tree":
        for k in ("tree_width", "branch_factor", "branch_depth", "max_steps", "max_step_tokens"):
            v = getattr(ro, k)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"objective.rollout.{k}={v!r}: must be a positive integer")
        if ro.branch_top < 0:
            raise UserError(f"objective.rollout.branch_top={ro.branch_top!r}: must be >= 0 "
                            "(0: branch every open node)")
        if ro.policy not in ("tree", "hf"):
            raise UserError(f"objective.rollout.policy={ro.policy!r}: must be tree or hf")
    if ro.search:
        from ..plugin_manager import get_registry

        reg = get_registry("search")
        if ro.search not in reg:
            raise UserError(f"objective.rollout.search={ro.search!r}: no such search; registered: "
                            f"{', '.join(reg.names())} (or null for plain sampling)")
        if getattr(objective, "rollout_source", None) == "tree":
            raise UserError(f"objective.rollout.search={ro.search!r}: tree_grpo samples its own "
                            "trees; use objective=grpo or ppo with a search")
