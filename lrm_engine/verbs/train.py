"""``lrm train``: train a policy or a reward model with an objective.

    lrm train objective=sft task=arith [overrides]
    lrm train objective=prm task=arith objective.data=oracle
    lrm train objective=prm task=arith objective.data=path/to/prm.jsonl objective.model.init=<dir>

The verb builds the run's data for the kind of batches the objective consumes (its
``batch_kind``; the training loop itself knows no objective by name) and runs the one trainer:

- ``sft``: the task's step-by-step solutions (a share with one injected wrong step) ->
  :func:`lrm_engine.train.train_sft`; the policy ends in ``<run_dir>/model``;
- ``prm``: TRL PRM records — a JSONL file (malformed lines reported ``file:line`` and skipped),
  or ``data=oracle``: the task's noisy solutions with its exact prefix labels (a testing aid
  until annotation lands; written to ``<run_dir>/prm_data.oracle.jsonl``) ->
  :func:`lrm_engine.train.train_prm`; the PRM ends in ``<run_dir>/model`` (+ prm_config.json),
  and its held-out step AUROC against the task's exact prefix labels is printed and written to
  ``<run_dir>/eval.json``.

Run folder: ``<runtime.output_dir>/train/<run name>``; the name is ``objective.run_name`` or
``<objective>-<task>[-<data>]-<hash>``, the hash covering every setting that changes what is
trained (objective node, task node, runtime seed; not checkpoint/logging cadence nor eval), so
rerunning the same command resumes the same run from its newest checkpoint (and returns at
once when it is complete), while a changed setting starts a new folder. Inside: checkpoints/,
tb/ (TensorBoard), data_log.jsonl, run_config.json, result.json, model/.

Seed, device, threads and the progress bar come from ``runtime``. After each optimizer step the
``lrm_iteration_end`` lifecycle hook is called with the step's metrics.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from lrm_engine.components import Components

# Settings that do not change what is trained (left out of the run-name hash): cadence, and how
# the data-parallel run is laid out (the global batch is hashed instead, see settings_hash).
_CADENCE_KEYS = ("save_every", "keep_last", "log_every", "tensorboard", "strategy",
                 "dist_timeout_s")


def unavailable(cfg: DictConfig, components: Components) -> str | None:
    """Why train cannot run: no task, or an objective whose batches no recipe here builds."""
    if components.task is None:
        return "no task selected (add task=<option>)"
    kind = getattr(components.objective, "batch_kind", None)
    if kind not in RECIPES:
        return (f"objective {cfg.objective.name!r} consumes {kind!r} batches, and `lrm train` has "
                f"no data recipe for them yet (recipes: {', '.join(RECIPES)})")
    return None


def main(cfg: DictConfig, components: Components) -> Mapping[str, Any]:
    import torch

    from lrm_engine.cli import UsageError
    from lrm_engine.train import distributed as dist_
    from lrm_engine.train.trainer import join_group

    n = int(cfg.runtime.num_threads or 0)
    if n > 0:
        torch.set_num_threads(n)
    kind = components.objective.batch_kind
    if dist_.env_world_size() > 1 and kind not in DATA_PARALLEL:
        raise UsageError(f"objective={cfg.objective.name} does not run data-parallel yet "
                         f"(its batches: {kind}; data-parallel: {', '.join(sorted(DATA_PARALLEL))}); "
                         f"run it as one process, without torchrun", show_usage=False)
    if kind in DATA_PARALLEL:
        join_group(_train_config(cfg))
    dist_.quiet_stdout_unless_main()  # one summary line per run: rank 0's
    run_dir = run_dir_for(cfg)
    if dist_.is_main():
        print(f"lrm train: run folder {run_dir}"
              + (f" ({dist_.world_size()} ranks)" if dist_.active() else ""), file=sys.stderr)
    try:
        out = RECIPES[kind](cfg, components, run_dir)
    except dist_.PeerLost as e:
        print(str(e), file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    dist_.shutdown()
    return out


# --------------------------------------------------------------------------- run folder


def _plain(node) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


def settings_hash(cfg: DictConfig) -> str:
    """8 hex digits over the settings that change what is trained (see the module docstring)."""
    obj = _plain(cfg.objective)
    obj.pop("run_name", None)
    obj.pop("eval", None)
    for k in _CADENCE_KEYS:
        obj.get("train", {}).pop(k, None)
    if "micro_batch_size" in obj.get("train", {}):
        # the global micro-batch: N ranks at B and one process at N x B train the same thing
        from lrm_engine.train.distributed import env_world_size

        obj["train"]["micro_batch_size"] *= max(1, env_world_size())
    doc = {"objective": obj, "task": _plain(cfg.task), "seed": int(cfg.runtime.seed)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:8]


def run_dir_for(cfg: DictConfig) -> Path:
    """``<runtime.output_dir>/train/<run name>`` (see the module docstring)."""
    root = Path(str(cfg.runtime.output_dir)) / "train"
    if cfg.objective.get("run_name"):
        return root / str(cfg.objective.run_name)
    parts = [str(cfg.objective.name), str(cfg.task.name)]
    data = cfg.objective.get("data")
    if isinstance(data, str):
        parts.append("oracle" if data == "oracle" else re.sub(r"[^\w.-]+", "_", Path(data).stem))
    parts.append(settings_hash(cfg))
    return root / "-".join(parts)


# --------------------------------------------------------------------------- shared pieces


def _train_config(cfg: DictConfig):
    from lrm_engine.components import resolve_device
    from lrm_engine.train import TrainConfig

    t = _plain(cfg.objective.train)
    rt = cfg.runtime
    from lrm_engine.cli import UsageError
    from lrm_engine.train.distributed import STRATEGIES

    if t.get("strategy", "ddp") not in STRATEGIES:
        raise UsageError(f"objective.train.strategy={t['strategy']!r} is not a strategy; use one "
                         f"of {', '.join(STRATEGIES)}", show_usage=False)
    return TrainConfig(**t, seed=int(rt.seed), device=resolve_device(rt.device),
                       progress=bool(rt.progress),
                       num_threads=int(rt.num_threads) if int(rt.num_threads or 0) > 0 else None)


def _hook_callback() -> Callable[[int, Mapping[str, float]], None]:
    from lrm_engine.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()

    def cb(step: int, metrics: Mapping[str, float]) -> None:
        pm.hook.lrm_iteration_end(iteration=step - 1, metrics=dict(metrics))

    return cb


def _summary(objective: str, task_name: str, result) -> dict[str, Any]:
    return {
        "objective": objective, "task": task_name, "run_dir": result.run_dir,
        "model_dir": result.model_dir, "steps": result.steps, "resumed_from": result.resumed_from,
        "first_loss": result.first_loss, "final_loss": result.final_loss,
        "wall_s": round(result.wall_s, 3), "tokens_per_s": round(result.tokens_per_s, 1),
        "last_checkpoint": result.last_checkpoint,
    }


# --------------------------------------------------------------------------- recipes


def recipe_sft(cfg: DictConfig, components: Components, run_dir: Path) -> dict[str, Any]:
    """SFT on the task's (noisy) solutions via :func:`lrm_engine.train.train_sft`."""
    from lrm_engine.train import SFTDataConfig, train_sft

    o = cfg.objective
    data = SFTDataConfig(split=o.split, num_examples=o.num_examples, noise_fraction=o.noise_fraction,
                         noise_seed=o.noise_seed, max_length=o.max_length, pack=o.pack,
                         shuffle=o.shuffle)
    result = train_sft(run_dir, task=components.task, objective=components.objective,
                       model=o.model.init or None, model_size=o.model.size,
                       model_seed=o.model.seed, data=data, train=_train_config(cfg),
                       callbacks=[_hook_callback()])
    return _summary("sft", str(cfg.task.name), result)


def prm_records(cfg: DictConfig, task, run_dir: Path) -> tuple[list, dict[str, Any]]:
    """The PRM records of a run: oracle-labelled from the task, or read from a JSONL file."""
    from lrm_engine.cli import UsageError
    from lrm_engine.train.prm_data import load_prm_jsonl, oracle_prm_records, write_prm_jsonl

    o = cfg.objective
    if o.data == "oracle":
        from lrm_engine.train.distributed import is_main

        try:
            records = oracle_prm_records(task, o.oracle.split, limit=o.num_records,
                                         noise_fraction=o.oracle.noise_fraction,
                                         noise_seed=o.oracle.noise_seed)
        except ValueError as e:
            raise UsageError(str(e), show_usage=False) from e
        if is_main():  # the other ranks build the same records and write nothing
            run_dir.mkdir(parents=True, exist_ok=True)
            write_prm_jsonl(run_dir / "prm_data.oracle.jsonl", records)
        return records, {"source": "oracle (task's exact prefix labels over noisy solutions)",
                         "records": len(records), **_plain(o.oracle)}
    path = Path(str(o.data))
    if not path.is_file():
        raise UsageError(f"objective.data={o.data!r}: no such file (give a TRL PRM JSONL path, "
                         f"or objective.data=oracle)", show_usage=False)
    report = load_prm_jsonl(path, limit=o.num_records)
    if report.skipped:
        print(f"lrm train: {report.skipped} malformed PRM records skipped in {path} "
              f"(first: {report.errors[0]})", file=sys.stderr)
    if not report.records:
        raise UsageError(f"{path}: no valid PRM record", show_usage=False)
    return report.records, {"source": str(path.resolve()), "records": len(report.records),
                            "skipped": report.skipped, "errors": report.errors[:20]}


def recipe_prm(cfg: DictConfig, components: Components, run_dir: Path) -> dict[str, Any]:
    """A ``prm_token`` PRM via :func:`lrm_engine.train.train_prm`, then held-out step AUROC."""
    from lrm_engine.train import PRMDataConfig, PRMEvalConfig, train_prm

    o = cfg.objective
    task = components.task
    records, info = prm_records(cfg, task, run_dir)
    ev = False
    if o.eval.enabled:
        e = _plain(o.eval)
        e.pop("enabled")
        ev = PRMEvalConfig(**e)
    result = train_prm(run_dir, records=records, task=task, objective=components.objective,
                       model=o.model.init or None, model_size=o.model.size,
                       model_seed=o.model.seed,
                       data=PRMDataConfig(max_length=o.max_length, shuffle=o.shuffle),
                       train=_train_config(cfg), evaluate=ev, data_info=info,
                       callbacks=[_hook_callback()])
    out = _summary("prm", str(cfg.task.name), result)
    out["data"] = {k: v for k, v in info.items() if k != "errors"}
    evres = result.metrics.get("eval")
    if evres is not None:
        out["step_auroc"] = evres["step_auroc"]
        out["eval"] = {k: evres[k] for k in ("step_auroc", "step_accuracy", "solution_auroc_min",
                                             "num_solutions", "num_steps", "num_good_steps")}
        out["eval_file"] = str(Path(result.run_dir) / "eval.json")
        print(f"lrm train: held-out step AUROC {evres['step_auroc']} "
              f"({evres['num_steps']} steps of {evres['num_solutions']} solutions, "
              f"{evres['eval']['split']} split; exact prefix labels)", file=sys.stderr)
    return out


# batch kind -> recipe
RECIPES: dict[str, Callable[[Any, Any, Path], dict[str, Any]]] = {
    "sft": recipe_sft,
    "prm": recipe_prm,
}


def recipe_pref(cfg: DictConfig, components: Components, run_dir: Path) -> dict[str, Any]:
    """Preference pairs (``pref``: dpo, ipo, odpo; ``step_pref``: step_dpo) from a JSONL file
    (malformed lines reported ``file:line`` and skipped) -> :func:`lrm_engine.train.pref.train_pref`."""
    from lrm_engine.cli import UsageError
    from lrm_engine.train.pref import PrefDataConfig, train_pref
    from lrm_engine.train.pref_data import load_pref_jsonl

    o = cfg.objective
    obj = components.objective
    if not o.get("data"):
        raise UsageError(f"objective={o.name} needs objective.data=<preference JSONL path>",
                         show_usage=False)
    path = Path(str(o.data))
    if not path.is_file():
        raise UsageError(f"objective.data={o.data!r}: no such file", show_usage=False)
    needs = bool(getattr(obj, "requires_scores", False))
    report = load_pref_jsonl(path, limit=o.num_records, require_scores=needs, require_margin=needs)
    if report.skipped:
        print(f"lrm train: {report.skipped} malformed preference records skipped in {path} "
              f"(first: {report.errors[0]})", file=sys.stderr)
    if not report.records:
        raise UsageError(f"{path}: no valid preference record", show_usage=False)
    step = obj.batch_kind == "step_pref"
    data = PrefDataConfig(max_length=o.max_length, shuffle=o.shuffle, add_eos=not step,
                          completion_suffix=str(o.get("completion_suffix", "")) if step else "")
    info = {"source": str(path.resolve()), "records": len(report.records),
            "skipped": report.skipped, "errors": report.errors[:20]}
    result = train_pref(run_dir, records=report.records, objective=obj,
                        model=o.model.init or None, model_size=o.model.size,
                        model_seed=o.model.seed, data=data, train=_train_config(cfg),
                        data_info=info, task_name=str(cfg.task.name), callbacks=[_hook_callback()])
    out = _summary(str(o.name), str(cfg.task.name), result)
    out["data"] = {k: v for k, v in info.items() if k != "errors"}
    return out


RECIPES["pref"] = recipe_pref
RECIPES["step_pref"] = recipe_pref


# RL recipes (grpo / ppo / vineppo on rollouts, rest_mcts self-training): lrm_engine/verbs/train_rl.py.
from lrm_engine.verbs.train_rl import recipe_rest_mcts, recipe_rollout  # noqa: E402

RECIPES["rollout"] = recipe_rollout
RECIPES["vine_rollout"] = recipe_rollout
RECIPES["rest_mcts"] = recipe_rest_mcts
RECIPES["orm"] = lambda *a: __import__("lrm_engine.train.orm", fromlist=["x"]).recipe_orm(*a)  # outcome RM

# Batch kinds whose recipes run data-parallel under torchrun (their batch sources shard by rank).
DATA_PARALLEL = frozenset({"sft", "prm", "pref", "step_pref", "rollout"})
