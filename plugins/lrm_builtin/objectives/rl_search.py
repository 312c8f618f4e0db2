"""Option schemas of ``vineppo`` (MC values through the tree engine), ``rest_mcts`` (ReST-MCTS*
self-training), ``tree_grpo`` (groups sampled as trees, TreeRL segment advantages) and the
search-in-the-loop rollouts of ``grpo`` / ``ppo`` (``rollout.search``: a registered search
with the PRM produces each group); the package's ``__init__`` adds them to ``OBJECTIVES`` /
``RUN_KEYS``. The user-facing options are conf/objective/<name>.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from lrm_engine.config import ObjectiveConfig

from . import ModelInitConfig, TrainLoopConfig
from .pref_rl import (GRPOObjectiveConfig, PPOObjectiveConfig, RLEvalConfig, RLPRMConfig,
                      RolloutConfig)
from .pref_rl import OBJECTIVES as _PREF_RL_OBJECTIVES


@dataclass
class VineRolloutConfig:
    """How a vineppo run samples trajectories and values their states."""

    # Task split the prompts come from.
    split: str = "train"
    # Use the first this many problems of the split (null: all).
    num_prompts: Optional[int] = 2000
    # Prompts per rollout batch.
    prompts_per_batch: int = 8
    # Trajectories sampled per prompt.
    num_generations: int = 4
    # Monte-Carlo completions per (deduplicated) state: K of VinePPO.
    mc_rollouts: int = 4
    # Sampling temperature (trajectories and MC completions).
    temperature: float = 1.0
    # Most steps per solution.
    max_steps: int = 10
    # Longest step in tokens.
    max_step_tokens: int = 24
    # Unused by vineppo (the step limits bound a solution); kept for the shared rollout settings.
    max_new_tokens: int = 256


@dataclass
class VinePPOObjectiveConfig(ObjectiveConfig):
    """``objective=vineppo``: clipped PPO on Monte-Carlo step advantages (no critic)."""

    # Registry name of the objective.
    name: str = "vineppo"
    # ε: clip range of the policy ratio.
    epsilon: float = 0.2
    # β: weight of the per-token k3 KL to the reference (0: no reference model).
    beta: float = 0.0
    # PPO epochs over each batch of trajectories (MC values estimated once); > 1: old log-probs from rollout time, the clip acts.
    num_ppo_epochs: int = 1
    # Reference model folder, loaded once (null: a frozen copy of the starting policy).
    ref_model: Optional[str] = None
    # Run folder name under <runtime.output_dir>/train/ (null: derived from the settings).
    run_name: Optional[str] = None
    # How trajectories and MC values are drawn.
    rollout: VineRolloutConfig = field(default_factory=VineRolloutConfig)
    # The policy to train (init null: the embedded default SFT policy of `lrm run`).
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    # Training-loop knobs.
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    # Optional PRM reward added to the verifier's.
    prm: RLPRMConfig = field(default_factory=RLPRMConfig)
    # Greedy accuracy before / after (not part of the run's settings hash).
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)


@dataclass
class RestPRMInit:
    """Which PRM a ReST-MCTS* run starts from."""

    # prm_token PRM folder (null: the embedded default PRM of `lrm run`).
    init: Optional[str] = None


@dataclass
class RestMCTSObjectiveConfig(ObjectiveConfig):
    """``objective=rest_mcts``: ReST-MCTS* iterations of MCTS + PRM, then policy SFT and PRM training."""

    # Registry name of the objective.
    name: str = "rest_mcts"
    # Self-training iterations (search, then train both models).
    iterations: int = 6
    # Train problems searched per iteration (each iteration takes the next ones).
    problems_per_iteration: int = 512
    # Task split the searched problems come from.
    split: str = "train"
    # MCTS simulations per problem.
    simulations: int = 12
    # Children per expanded node.
    k: int = 4
    # Leaves selected per tree per MCTS iteration.
    num_leaves: int = 2
    # PUCT exploration constant c1.
    c1: float = 1.25
    # Step-score aggregation of the PRM along a path: min, prod, last, mean.
    aggregation: str = "min"
    # Sampling temperature of the policy inside the search.
    temperature: float = 1.0
    # Most steps per solution.
    max_steps: int = 10
    # Longest step in tokens.
    max_step_tokens: int = 24
    # Problems per search batch.
    search_batch: int = 32
    # Policy SFT steps per iteration (on the verified traces).
    policy_steps: int = 20
    # Policy SFT micro-batch size.
    policy_batch: int = 16
    # Policy SFT peak learning rate.
    policy_lr: float = 1e-4
    # PRM steps per iteration (soft value targets).
    prm_steps: int = 20
    # PRM micro-batch size.
    prm_batch: int = 16
    # PRM peak learning rate.
    prm_lr: float = 1e-4
    # Held-out problems for the per-iteration greedy accuracy (0: none).
    eval_problems: int = 100
    # Task split of the held-out problems.
    eval_split: str = "test"
    # Run folder name under <runtime.output_dir>/train/ (null: derived from the settings).
    run_name: Optional[str] = None
    # The policy to improve (init null: the embedded default SFT policy of `lrm run`).
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    # The PRM that guides the search and is trained on the value targets.
    prm: RestPRMInit = field(default_factory=RestPRMInit)


RUN_KEYS: dict[str, tuple[str, ...]] = {
    "vineppo": ("run_name", "rollout", "model", "train", "prm", "eval"),
    "rest_mcts": tuple(f.name for f in RestMCTSObjectiveConfig.__dataclass_fields__.values()
                       if f.name != "name"),
}

OBJECTIVES = {
    "vineppo": (VinePPOObjectiveConfig, "VinePPO: clipped PPO, MC step values via the tree engine, no critic"),
    "rest_mcts": (RestMCTSObjectiveConfig, "ReST-MCTS*: MCTS+PRM search, verified traces -> policy SFT, values -> PRM"),
}


# --------------------------------------------------------------------- search-in-the-loop RL
@dataclass
class SearchRolloutConfig(RolloutConfig):
    """grpo / ppo rollouts: plain sampling, or (``search`` set) a search with the PRM whose
    finished solutions form each prompt's group (lrm_engine.train.rl_search_rollout)."""

    # Registry name of the search producing each group (beam, mcts, best_of_n, ...); null: plain sampling (num_generations per prompt).
    search: Optional[str] = None
    # Keyword arguments of that search (fields of its conf/search/<name>.yaml; set with `++objective.rollout.search_args={n: 8, beam_width: 2}`).
    search_args: Dict[str, Any] = field(default_factory=dict)
    # PRM (prm_token folder) guiding the search; "default": the embedded default PRM of `lrm run`; null: none.
    search_prm: Optional[str] = "default"
    # Most steps per searched solution.
    max_steps: int = 10
    # Longest step in tokens (searched solutions).
    max_step_tokens: int = 24


@dataclass
class GRPOSearchObjectiveConfig(GRPOObjectiveConfig):
    """``objective=grpo``: GRPO; its rollouts sampled, or produced by a search (rollout.search)."""

    # How completions are sampled, or searched (rollout.search).
    rollout: SearchRolloutConfig = field(default_factory=SearchRolloutConfig)


@dataclass
class PPOSearchObjectiveConfig(PPOObjectiveConfig):
    """``objective=ppo``: PPO; its rollouts sampled, or produced by a search (rollout.search)."""

    # How completions are sampled, or searched (rollout.search).
    rollout: SearchRolloutConfig = field(default_factory=SearchRolloutConfig)


# ------------------------------------------------------------------------------- tree_grpo
@dataclass
class TreeRolloutConfig:
    """How a tree_grpo run samples each group as one tree (lrm_engine.train.rl_tree)."""

    # Task split the prompts come from.
    split: str = "train"
    # Use the first this many problems of the split (null: all).
    num_prompts: Optional[int] = 2000
    # Prompts (trees) per rollout batch.
    prompts_per_batch: int = 8
    # m: children of the root.
    tree_width: int = 2
    # k: children of every node of depth 1 .. branch_depth - 1 (branching at the step delimiter).
    branch_factor: int = 2
    # d: depth of the last branching; below it paths grow one step at a time (m*k^(d-1) leaves).
    branch_depth: int = 3
    # Entropy branching: branch only the t open nodes per tree of highest step surprisal at each depth (0: all).
    branch_top: int = 0
    # Engine policy that grows the trees: tree (tree attention over shared segments) or hf.
    policy: str = "tree"
    # Sampling temperature.
    temperature: float = 1.0
    # Most steps per solution (path depth).
    max_steps: int = 10
    # Longest step in tokens.
    max_step_tokens: int = 24


@dataclass
class TreeGRPOObjectiveConfig(ObjectiveConfig):
    """``objective=tree_grpo``: GRPO loss on tree-sampled groups, TreeRL segment advantages."""

    # Registry name of the objective.
    name: str = "tree_grpo"
    # How tokens of a segment shared by |L| leaves count: sqrt (1/sqrt|L|, TreeRL), once (1/|L|) or none (1).
    shared_weight: str = "sqrt"
    # β: weight of the per-token k3 KL to the reference (0: no reference model).
    beta: float = 0.04
    # ε: lower clip of the ratio (1 - ε).
    epsilon: float = 0.2
    # ε_high: upper clip of the ratio (1 + ε_high; null: ε).
    epsilon_high: Optional[float] = None
    # Loss aggregation: grpo, bnpo, dr_grpo or dapo (as objective=grpo).
    loss_type: str = "grpo"
    # Optimisation passes over each rollout batch (μ); > 1: old log-probs from rollout time.
    num_iterations: int = 1
    # L of dr_grpo's normaliser N·L (null: rollout.max_steps * rollout.max_step_tokens).
    max_completion_length: Optional[int] = None
    # Reference model folder, loaded once (null: a frozen copy of the starting policy).
    ref_model: Optional[str] = None
    # Run folder name under <runtime.output_dir>/train/ (null: derived from the settings).
    run_name: Optional[str] = None
    # How each group's tree is sampled.
    rollout: TreeRolloutConfig = field(default_factory=TreeRolloutConfig)
    # The policy to train (init null: the embedded default SFT policy of `lrm run`).
    model: ModelInitConfig = field(default_factory=ModelInitConfig)
    # Training-loop knobs.
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    # Optional PRM reward added to the verifier's.
    prm: RLPRMConfig = field(default_factory=RLPRMConfig)
    # Greedy accuracy before / after (not part of the run's settings hash).
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)


_RL_RUN = ("run_name", "rollout", "model", "train", "prm", "eval")
RUN_KEYS["tree_grpo"] = _RL_RUN
OBJECTIVES["tree_grpo"] = (TreeGRPOObjectiveConfig,
                           "tree-sampled groups (shared prefixes), TreeRL global+local segment advantages")
# grpo / ppo with the rollout.search option (replaces pref_rl's schemas; same descriptions).
OBJECTIVES["grpo"] = (GRPOSearchObjectiveConfig, _PREF_RL_OBJECTIVES["grpo"][1])
OBJECTIVES["ppo"] = (PPOSearchObjectiveConfig, _PREF_RL_OBJECTIVES["ppo"][1])
