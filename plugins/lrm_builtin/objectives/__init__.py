"""Built-in objective plugin ("builtin.objectives"): ``sft`` and ``prm``.

Registers the objectives of :mod:`lrm_engine.objectives` through ``lrm_register_objectives`` and
their option schemas through ``lrm_register_configs`` (``schema/objective/<name>``; the
user-facing options are conf/objective/sft.yaml and conf/objective/prm.yaml).

What an objective option holds (one node per training run, read by ``lrm train``):

- the objective's hyperparameters at the top level (``label_smoothing``; ``good_token``,
  ``label_mode`` ...): the only fields the objective's factory receives;
- the run's data settings at the top level (``num_examples``, ``noise_fraction`` ...; for
  ``prm`` the ``data`` source: ``oracle`` or a TRL PRM JSONL path);
- ``model``: which model to train (a fresh tiny Llama of a size, or a local model folder);
- ``train``: the training-loop knobs (steps, batch size, lr, schedule, checkpoints);
- ``eval`` (``prm``): held-out step-level evaluation;
- ``run_name``: the run folder under ``<runtime.output_dir>/train/`` (null: derived from the
  objective, task, data and a hash of the settings, so the same command resumes the same run).

The seed, device, threads and progress bar come from ``runtime``. The factories drop the run
keys (:data:`RUN_KEYS`) and pass the hyperparameters on, so an unknown keyword still fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lrm_engine.config import ObjectiveConfig
from lrm_engine.hookspecs import hookimpl


@dataclass
class ModelInitConfig:
    """Which model a training run starts from."""

    # Size of a fresh tiny Llama (micro, tiny, small) when `init` is null.
    size: str = "tiny"
    # Local Hugging Face model folder to start from, its tokenizer included (null: from scratch).
    init: Optional[str] = None
    # Seed of a fresh model's weights.
    seed: int = 0


@dataclass
class TrainLoopConfig:
    """Training-loop knobs of one run (lrm_engine.train.TrainConfig; seed/device from runtime)."""

    # Optimizer steps of the whole run (a resumed run stops at the same count).
    total_steps: int = 500
    # Sequences per micro-batch.
    micro_batch_size: int = 32
    # Micro-batches per optimizer step.
    grad_accum: int = 1
    # Peak learning rate (AdamW).
    lr: float = 1e-3
    # Learning-rate floor as a fraction of the peak (end of the cosine schedule).
    min_lr_ratio: float = 0.1
    # Linear warmup steps.
    warmup_steps: int = 20
    # AdamW decoupled weight decay (not applied to 1-D parameters).
    weight_decay: float = 0.01
    # Clip the global gradient norm to this value; <= 0 disables clipping.
    max_grad_norm: float = 1.0
    # "fp32" or "bf16" (bf16 autocast; master weights stay fp32).
    precision: str = "fp32"
    # Write a checkpoint every this many steps (0: only at the end).
    save_every: int = 100
    # Keep this many most recent checkpoints (0: keep all).
    keep_last: int = 2
    # Write TensorBoard scalars every this many steps.
    log_every: int = 1
    # Write TensorBoard event files (<run_dir>/tb).
    tensorboard: bool = True
    # Data-parallel strategy under torchrun (more than one process; one process ignores it):
    # ddp (replicated weights, gradients all-reduced) or fsdp (FSDP2 fully_shard).
    strategy: str = "ddp"
    # Seconds a collective waits for the other ranks before failing (a dead peer).
    dist_timeout_s: float = 600.0


@dataclass
class SFTObjectiveConfig(ObjectiveConfig):
    """``objective=sft``: SFT of a policy on the task's (noisy) step-by-step solutions."""

    # Registry name of the objective.
    name: str = "sft"
    # Label smoothing of the token cross-entropy (objective hyperparameter).
    label_smoothing: float = 0.0
    # Task split to train on.
    split: str = "train"
    # Use the first this many problems of the split (null: all).
    num_examples: Optional[int] = 4000
    # Share of solutions with one injected wrong step (carried through), so the policy makes step errors.
    noise_fraction: float = 0.2
    # Seed of the noise injector.
    noise_seed: int = 0
    # Longest sequence in tokens (prompt + completion + eos); longer ones are cut.
    max_length: int = 256
    # Pack several examples per row (block-diagonal attention).
    pack: bool = False
    # Shuffle the examples each epoch.
    shuffle: bool = True
    # Run folder name under <runtime.output_dir>/train/ (null: derived from the settings).
    run_name: Optional[str] = None
    # The model to train.
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    # Training-loop knobs.
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)


@dataclass
class OracleDataConfig:
    """The oracle-labelled PRM data (``data: oracle``): task solutions with exact prefix labels."""

    # Task split the solutions come from.
    split: str = "train"
    # Share of solutions with one injected wrong step (carried through to the answer).
    noise_fraction: float = 0.5
    # Seed of the noise injector.
    noise_seed: int = 0


@dataclass
class PRMEvalOptions:
    """Held-out step-level evaluation after PRM training (exact prefix labels of the task)."""

    # Run the evaluation (needs a task with exact step labels, e.g. arith).
    enabled: bool = True
    # Task split of the held-out problems.
    split: str = "test"
    # Number of held-out problems (null: the whole split).
    num_problems: Optional[int] = 500
    # Share of held-out solutions with one injected wrong step.
    noise_fraction: float = 0.5
    # Seed of the noise injector for the held-out solutions.
    noise_seed: int = 1
    # Sequences per scoring forward pass.
    batch_size: int = 64


@dataclass
class PRMObjectiveConfig(ObjectiveConfig):
    """``objective=prm``: a token-level (Math-Shepherd) PRM trained on TRL PRM records."""

    # Registry name of the objective.
    name: str = "prm"
    # Label token read as "good step" at each step tag (must be one token).
    good_token: str = "+"
    # Label token read as "bad step" at each step tag (must be one token).
    bad_token: str = "-"
    # "hard": cross-entropy on label >= hard_threshold; "soft": BCE with the label as target.
    label_mode: str = "hard"
    # Labels at or above this count as good (hard mode, and the step accuracy metric).
    hard_threshold: float = 0.5
    # Take the two label columns of the full logits instead of the two head rows.
    full_logits: bool = False
    # "tag": P(good) vs P(bad) at each step tag (Math-Shepherd); "likelihood": the PRM's own
    # probability of the step's least likely token (a generative PRM; same loss).
    readout: str = "tag"
    # The model kind to train, read by the reward of the same name: prm_token (a causal LM's
    # good/bad token rows), prm_head (two-class head, Qwen2.5-Math-PRM; cross-entropy) or
    # value_head (sigmoid value head, ReST-MCTS*; value_loss against the labels).
    head: str = "prm_token"
    # head=value_head: "mse" ((sigmoid - label)^2, ReST-MCTS*) or "bce" (binary cross-entropy).
    value_loss: str = "mse"
    # PRM data: "oracle" (task solutions with exact labels; testing only) or a TRL PRM JSONL path.
    data: str = "oracle"
    # Records to use (oracle: problems of the split; file: first valid records; null: all).
    num_records: Optional[int] = 2000
    # Settings of the oracle-labelled data (used when data is "oracle").
    oracle: OracleDataConfig = field(default_factory=OracleDataConfig)
    # Longest sequence in tokens (prompt + steps + tags); later steps are cut.
    max_length: int = 256
    # Shuffle the records each epoch.
    shuffle: bool = True
    # Run folder name under <runtime.output_dir>/train/ (null: derived from the settings).
    run_name: Optional[str] = None
    # The PRM to train (a second model; init may point at the SFT policy's model folder).
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    # Training-loop knobs.
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    # Held-out step-level evaluation (AUROC against the task's exact prefix labels).
    eval: PRMEvalOptions = field(default_factory=PRMEvalOptions)


# Fields of each option that describe the run, not the objective: the factory never sees them.
RUN_KEYS: dict[str, tuple[str, ...]] = {
    "sft": ("split", "num_examples", "noise_fraction", "noise_seed", "max_length", "pack",
            "shuffle", "run_name", "model", "train"),
    "prm": ("data", "num_records", "oracle", "max_length", "shuffle", "run_name", "model", "train",
            "eval"),
}


def _factory(name: str):
    """The registry factory of objective ``name``: drops the run keys, builds the objective
    (torch is imported on the first call, not at registration)."""

    def factory(**kwargs):
        import importlib

        from lrm_engine.objectives import FACTORIES

        for k in RUN_KEYS[name]:
            kwargs.pop(k, None)
        if name in FACTORIES:
            return FACTORIES[name](**kwargs)
        module, attr = MODULE_FACTORIES[name].split(":")
        return getattr(importlib.import_module(module), attr)(**kwargs)

    factory.__name__ = f"make_{name}_objective"
    return factory


OBJECTIVES = {
    "sft": (SFTObjectiveConfig, "supervised fine-tuning, cross-entropy on completion tokens"),
    "prm": (PRMObjectiveConfig, "token-level PRM (Math-Shepherd): good/bad token CE at step tags"),
}


@hookimpl
def lrm_register_objectives(registry):
    for name, (_schema, description) in OBJECTIVES.items():
        registry.register(name, _factory(name), description=description)


@hookimpl
def lrm_register_configs(config_store):
    for name, (schema, _description) in OBJECTIVES.items():
        config_store.store(group="schema/objective", name=name, node=schema)


# Preference (dpo, ipo, odpo, step_dpo) and RL (grpo, ppo) objectives: schemas in pref_rl.py.
from . import pref_rl as _pref_rl  # noqa: E402  (needs ModelInitConfig/TrainLoopConfig above)

OBJECTIVES.update(_pref_rl.OBJECTIVES)
RUN_KEYS.update(_pref_rl.RUN_KEYS)

# VinePPO and ReST-MCTS* schemas: rl_search.py.
from . import rl_search as _rl_search  # noqa: E402

OBJECTIVES.update(_rl_search.OBJECTIVES)
RUN_KEYS.update(_rl_search.RUN_KEYS)


# --------------------------------------------------------------------------- orm
# Objectives whose factory lives in its own module (not in lrm_engine.objectives.FACTORIES).
MODULE_FACTORIES: dict[str, str] = {"orm": "lrm_engine.objectives.orm:make_orm_objective"}


@dataclass
class ORMObjectiveConfig(ObjectiveConfig):
    """``objective=orm``: an outcome reward model on graded solutions, read by ``reward=orm``."""

    # Registry name of the objective.
    name: str = "orm"
    # The model kind: prm_token (good/bad token rows of a causal LM), prm_head (two-class head)
    # or value_head (sigmoid head); read at the final step's tag. reward=orm reads it back from
    # the folder's orm_config.json.
    head: str = "prm_token"
    # head=prm_token: label token read as "correct solution" (must be one token).
    good_token: str = "+"
    # head=prm_token: label token read as "wrong solution" (must be one token).
    bad_token: str = "-"
    # "hard": cross-entropy on label >= hard_threshold; "soft": the label as target.
    label_mode: str = "hard"
    # Labels at or above this count as correct (hard mode, and the accuracy metric).
    hard_threshold: float = 0.5
    # head=prm_token: take the two label columns of the full logits instead of the two head rows.
    full_logits: bool = False
    # head=value_head: "mse" ((sigmoid - label)^2) or "bce" (binary cross-entropy).
    value_loss: str = "mse"
    # Graded solutions: a JSONL of TRL {"prompt", "completion", "label"} records (see
    # lrm_engine/train/orm_data.py for making one from `lrm search` results), or "oracle" (the
    # task's noisy solutions graded by the task; testing only).
    data: str = "oracle"
    # Records to use (oracle: problems of the split; file: first valid records; null: all).
    num_records: Optional[int] = 2000
    # Settings of the oracle data (used when data is "oracle").
    oracle: OracleDataConfig = field(default_factory=OracleDataConfig)
    # Longest sequence in tokens (prompt + steps + tags); a solution cut by it is dropped.
    max_length: int = 256
    # Shuffle the records each epoch.
    shuffle: bool = True
    # Run folder name under <runtime.output_dir>/train/ (null: derived from the settings).
    run_name: Optional[str] = None
    # The ORM to train (init may point at the SFT policy's or the PRM's model folder).
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    # Training-loop knobs.
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)


OBJECTIVES["orm"] = (ORMObjectiveConfig, "outcome reward model: PRM head losses at each solution's final step tag")
RUN_KEYS["orm"] = ("data", "num_records", "oracle", "max_length", "shuffle", "run_name", "model", "train")
