"""Option schemas of the preference (``dpo``, ``ipo``, ``odpo``, ``step_dpo``) and RL (``grpo``,
``ppo``) objectives; the package's ``__init__`` adds them to its ``OBJECTIVES`` / ``RUN_KEYS``.

The user-facing options are conf/objective/<name>.yaml. As for ``sft``/``prm``, the objective's
hyperparameters sit at the top level (the only keys the factory receives); the run keys (data,
model, train, rollout settings, run_name) are dropped before the factory is called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lrm_engine.config import ObjectiveConfig

from . import ModelInitConfig, TrainLoopConfig


@dataclass
class PrefRunConfig(ObjectiveConfig):
    """The run settings every preference objective shares (data, reference, model, loop)."""

    # Preference pairs: a TRL DPO JSONL path (prompt, chosen, rejected[, scores]).
    data: Optional[str] = None
    # Reference model folder, loaded once (null: a frozen copy of the starting policy).
    ref_model: Optional[str] = None
    # Use the first this many valid pairs of the file (null: all).
    num_records: Optional[int] = None
    # Longest sequence in tokens (context + completion + eos); longer ones are cut.
    max_length: int = 256
    # Shuffle the pairs each epoch.
    shuffle: bool = True
    # Run folder name under <runtime.output_dir>/train/ (null: derived from the settings).
    run_name: Optional[str] = None
    # The policy to train (init: the SFT policy's model folder).
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    # Training-loop knobs.
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)


@dataclass
class DPOObjectiveConfig(PrefRunConfig):
    """``objective=dpo``: DPO (sigmoid loss on summed log-ratios) against a frozen reference."""

    # Registry name of the objective.
    name: str = "dpo"
    # β: scale of the log-ratio margin inside the sigmoid (IPO: target margin 1/(2β)).
    beta: float = 0.1
    # "sigmoid" (DPO) or "ipo" ((h - 1/(2β))², see ipo_length_norm).
    loss_type: str = "sigmoid"
    # Conservative-DPO label smoothing ε in [0, 0.5): -(1-ε) log σ(βh) - ε log σ(-βh).
    label_smoothing: float = 0.0
    # IPO only: per-token mean log-probs (TRL's choice) instead of summed ones.
    ipo_length_norm: bool = True


@dataclass
class IPOObjectiveConfig(DPOObjectiveConfig):
    """``objective=ipo``: IPO, (h - 1/(2β))² on (by default per-token mean) log-ratios."""

    # Registry name of the objective.
    name: str = "ipo"
    # The IPO loss (see dpo's loss_type).
    loss_type: str = "ipo"


@dataclass
class ODPOObjectiveConfig(PrefRunConfig):
    """``objective=odpo``: DPO with offset α·log(r_w - r_l) (Amini et al. 2024)."""

    # Registry name of the objective.
    name: str = "odpo"
    # β: scale of the log-ratio margin inside the sigmoid.
    beta: float = 0.1
    # α: scale of the offset log(r_w - r_l) (0: plain DPO).
    alpha: float = 1.0
    # Label smoothing ε in [0, 0.5) of the sigmoid loss.
    label_smoothing: float = 0.0
    # Preference pairs with scores: JSONL path; pairs with score_chosen <= score_rejected are rejected.
    data: Optional[str] = None


@dataclass
class StepDPOObjectiveConfig(PrefRunConfig):
    """``objective=step_dpo``: DPO on step pairs (prompt + prefix as context, chosen vs rejected step)."""

    # Registry name of the objective.
    name: str = "step_dpo"
    # β: scale of the log-ratio margin inside the sigmoid.
    beta: float = 0.1
    # Label smoothing ε in [0, 0.5) of the sigmoid loss.
    label_smoothing: float = 0.0
    # Step pairs: JSONL path (prompt, prefix or initial_reason_steps, chosen step, rejected step).
    data: Optional[str] = None
    # Longest sequence in tokens (prompt + prefix + step); longer ones are cut.
    max_length: int = 256
    # Text after each compared step (the task's step delimiter); no eos is added.
    completion_suffix: str = "\n"


@dataclass
class RolloutConfig:
    """How an on-policy run samples its groups of completions."""

    # Task split the prompts come from.
    split: str = "train"
    # Use the first this many problems of the split (null: all).
    num_prompts: Optional[int] = 2000
    # Prompts per rollout batch.
    prompts_per_batch: int = 8
    # Completions sampled per prompt (the group size).
    num_generations: int = 8
    # Sampling temperature.
    temperature: float = 1.0
    # Longest completion in tokens.
    max_new_tokens: int = 128


@dataclass
class RLPRMConfig:
    """An optional PRM reward added to the verifier's 1/0 in on-policy runs."""

    # prm_token PRM folder; "default": the embedded default PRM of `lrm run`; null: verifier only.
    path: Optional[str] = None
    # Weight of the PRM's min-over-steps P(good) in the reward.
    weight: float = 0.5


@dataclass
class RLEvalConfig:
    """Greedy accuracy (tree engine) of the policy before and after an on-policy run."""

    # Evaluate before and after training (written to <run_dir>/eval.json).
    enabled: bool = True
    # Task split of the evaluation problems.
    split: str = "test"
    # Evaluation problems (null: the whole split).
    num_problems: Optional[int] = 100
    # Most steps per greedy solution.
    max_steps: int = 10
    # Longest step in tokens.
    max_step_tokens: int = 24
    # Problems per greedy search batch.
    batch_size: int = 32


@dataclass
class GRPOObjectiveConfig(ObjectiveConfig):
    """``objective=grpo``: GRPO with group-normalised advantages and k3 KL to a reference."""

    # Registry name of the objective.
    name: str = "grpo"
    # β: weight of the per-token k3 KL to the reference (0: no reference model).
    beta: float = 0.04
    # ε: lower clip of the ratio (1 - ε).
    epsilon: float = 0.2
    # ε_high: upper clip of the ratio (1 + ε_high; null: ε). DAPO uses 0.28.
    epsilon_high: Optional[float] = None
    # Loss aggregation: grpo, bnpo, dr_grpo or dapo (TRL's definitions, see the objective).
    loss_type: str = "grpo"
    # Divide advantages by the group's reward std (false: mean-centred only; ignored, i.e. false, under dr_grpo).
    scale_rewards: bool = True
    # Optimisation passes over each rollout batch (TRL's num_iterations, μ); > 1: old log-probs from rollout time, the clip acts.
    num_iterations: int = 1
    # L of dr_grpo's normaliser N·L (null: the rollout's max_new_tokens).
    max_completion_length: Optional[int] = None
    # Reference model folder, loaded once (null: a frozen copy of the starting policy).
    ref_model: Optional[str] = None
    # Run folder name under <runtime.output_dir>/train/ (null: derived from the settings).
    run_name: Optional[str] = None
    # How completions are sampled.
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    # The policy to train (init null: the embedded default SFT policy of `lrm run`).
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    # Training-loop knobs.
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    # Optional PRM reward added to the verifier's.
    prm: RLPRMConfig = field(default_factory=RLPRMConfig)
    # Greedy accuracy before / after (not part of the run's settings hash).
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)


@dataclass
class PPOObjectiveConfig(ObjectiveConfig):
    """``objective=ppo``: clipped PPO with a value head, GAE and an optional KL penalty."""

    # Registry name of the objective.
    name: str = "ppo"
    # γ: discount of GAE.
    gamma: float = 1.0
    # λ: GAE's bias/variance trade-off.
    lam: float = 0.95
    # ε: clip range of the policy ratio.
    cliprange: float = 0.2
    # Clip range of the value prediction around the rollout's value.
    cliprange_value: float = 0.2
    # Weight of the value loss.
    vf_coef: float = 0.1
    # Per-token KL penalty coefficient in the reward (0: no reference model).
    kl_coef: float = 0.05
    # Whiten advantages over the micro-batch's completion tokens.
    whiten_advantages: bool = True
    # PPO epochs over each rollout batch (TRL's num_ppo_epochs); > 1: old log-probs and values from rollout time, clipping acts.
    num_ppo_epochs: int = 1
    # Reference model folder, loaded once (null: a frozen copy of the starting policy).
    ref_model: Optional[str] = None
    # Run folder name under <runtime.output_dir>/train/ (null: derived from the settings).
    run_name: Optional[str] = None
    # How completions are sampled.
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    # The policy to train (init null: the embedded default SFT policy of `lrm run`).
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    # Training-loop knobs.
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    # Optional PRM reward added to the verifier's.
    prm: RLPRMConfig = field(default_factory=RLPRMConfig)
    # Greedy accuracy before / after (not part of the run's settings hash).
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)


_PREF_RUN = ("data", "num_records", "max_length", "shuffle", "run_name", "model", "train")
_RL_RUN = ("run_name", "rollout", "model", "train", "prm", "eval")

RUN_KEYS: dict[str, tuple[str, ...]] = {
    "dpo": _PREF_RUN, "ipo": _PREF_RUN, "odpo": _PREF_RUN,
    "step_dpo": _PREF_RUN + ("completion_suffix",),
    "grpo": _RL_RUN, "ppo": _RL_RUN,
}

OBJECTIVES = {
    "dpo": (DPOObjectiveConfig, "DPO: sigmoid loss on summed log-ratios vs a frozen reference"),
    "ipo": (IPOObjectiveConfig, "IPO: (h - 1/(2 beta))^2 on per-token-mean log-ratios"),
    "odpo": (ODPOObjectiveConfig, "DPO with offset alpha*log(r_w - r_l) (needs pair scores)"),
    "step_dpo": (StepDPOObjectiveConfig, "DPO on step pairs, the solution prefix as context"),
    "grpo": (GRPOObjectiveConfig, "GRPO: group-normalised advantages, clipped ratio, k3 KL"),
    "ppo": (PPOObjectiveConfig, "PPO: clipped ratio, value head, GAE, optional KL penalty"),
}
