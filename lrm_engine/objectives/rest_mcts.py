"""``rest_mcts``: ReST-MCTS* self-training (Zhang et al. 2024) — the objective side.

ReST-MCTS* is an outer loop, not a per-batch loss: each iteration searches train problems with
MCTS guided by the PRM, keeps the traces the verifier accepts (graded *after* the search) as
SFT data for the policy, turns every searched node into a value target for the PRM, and trains
both for a few steps. The loop is :func:`lrm_engine.train.rest_mcts.train_rest_mcts` (the
``rest_mcts`` recipe of ``lrm train``); its two inner trainings use the ``sft`` and ``prm``
objectives (soft labels). This class carries the registry entry and the settings.

Value targets (the paper's Eq. for partial solutions, with γ-free reasoning distance): along a
root-to-node path with values ``v_0 = 0``,

    v_k = clip(v_{k-1} + w_k, 0, 1),   w_k = (1 - v_{k-1}) / (m_k + 1) · (1 - 2 r_k)

where ``r_k = 0`` when node k's subtree holds a verified-correct solution (a correct step) and 1
otherwise, and ``m_k`` is the number of steps from node k to the nearest correct solution below
it (``r_k = 0``) or to the nearest finished solution below it (``r_k = 1``). A correct final
step gets ``v = 1``; a wrong one ``v = max(2 v_{k-1} - 1, 0)``. Nodes with no finished solution
below them get no target.
"""

from __future__ import annotations

from .base import ObjectiveBase


class RestMCTSObjective(ObjectiveBase):
    """Registry entry of ReST-MCTS* (see the module docstring); the work is in the recipe."""

    name = "rest_mcts"
    # What the run consumes: its own search-then-train iterations (lrm_engine.train.rest_mcts).
    batch_kind = "rest_mcts"

    def __init__(self, **settings):
        self.settings = dict(settings)


def make_rest_mcts_objective(**kwargs) -> RestMCTSObjective:
    """Registry factory for ``objective=rest_mcts``."""
    kwargs.pop("name", None)
    return RestMCTSObjective(**kwargs)
