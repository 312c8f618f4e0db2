"""Training objectives: each turns a batch into ``(loss, metrics)`` for the one training loop.

Registered by name through the ``lrm_register_objectives`` hook (see :data:`FACTORIES`).
"""

from .base import Objective, ObjectiveBase
from .prm import PRMObjective, make_prm_objective
from .sft import SFTObjective, make_sft_objective
from .dpo import DPOObjective, make_dpo_objective, make_ipo_objective
from .odpo import ODPOObjective, make_odpo_objective
from .step_dpo import StepDPOObjective, make_step_dpo_objective
from .grpo import GRPOObjective, make_grpo_objective
from .ppo import PPOObjective, make_ppo_objective

# Registry name -> factory, for the plugin that registers the built-in objectives.
FACTORIES = {"sft": make_sft_objective, "prm": make_prm_objective}
FACTORIES.update({"dpo": make_dpo_objective, "ipo": make_ipo_objective,
                  "odpo": make_odpo_objective, "step_dpo": make_step_dpo_objective,
                  "grpo": make_grpo_objective, "ppo": make_ppo_objective})

__all__ = ["Objective", "ObjectiveBase", "PRMObjective", "SFTObjective", "make_prm_objective",
           "make_sft_objective", "FACTORIES"]
__all__ += ["DPOObjective", "ODPOObjective", "StepDPOObjective", "GRPOObjective", "PPOObjective"]

# VinePPO (MC step values through the tree engine) and ReST-MCTS* (self-training iterations).
from .vineppo import VinePPOObjective, make_vineppo_objective  # noqa: E402
from .rest_mcts import RestMCTSObjective, make_rest_mcts_objective  # noqa: E402

FACTORIES.update({"vineppo": make_vineppo_objective, "rest_mcts": make_rest_mcts_objective})
__all__ += ["VinePPOObjective", "RestMCTSObjective"]

# Tree-structured GRPO (TreeRL segment advantages on groups sampled as trees).
from .tree_grpo import TreeGRPOObjective, make_tree_grpo_objective  # noqa: E402

FACTORIES.update({"tree_grpo": make_tree_grpo_objective})
__all__ += ["TreeGRPOObjective"]
