"""Training objectives: each turns a batch into ``(loss, metrics)`` for the one training loop.

Registered by name through the ``lrm_register_objectives`` hook (see :data:`FACTORIES`).
"""

from .base import Objective, ObjectiveBase
from .prm import PRMObjective, make_prm_objective
from .sft import SFTObjective, make_sft_objective

# Registry name -> factory, for the plugin that registers the built-in objectives.
FACTORIES = {"sft": make_sft_objective, "prm": make_prm_objective}

__all__ = ["Objective", "ObjectiveBase", "PRMObjective", "SFTObjective", "make_prm_objective",
           "make_sft_objective", "FACTORIES"]
