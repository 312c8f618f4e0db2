"""``tree_grpo``: GRPO-family loss on groups sampled as trees, with TreeRL's segment advantages
(Hou et al. 2025, "TreeRL: LLM Reinforcement Learning with On-Policy Tree Search"; the same idea
as TreePO's and SPO's segment-level advantages).

Rollouts: :class:`lrm_engine.train.rl_tree.TreeRolloutSource` samples each group as one tree on
the engine (shared prefixes computed once in the policy's KV store) and computes, per node n
of the tree (a step; a *segment* is the chain of nodes between two branch points),

    A(n) = [ (V(n) - V(root)) + (V(n) - V(P(n))) ] · w(n)

with V(n) the mean reward of the leaves under n, P(n) the branch point that starts n's segment
(its nearest ancestor with two or more children, or the root), and ``shared_weight`` choosing
w(n): ``sqrt`` = 1/sqrt(|L(n)|) (TreeRL), ``once`` = 1/|L(n)| (a shared token counts once over
the rows that contain it), ``none`` = 1. Every token of n gets A(n); each leaf's path is one
training row (see :mod:`lrm_engine.train.rl_tree`).

Loss: exactly :func:`lrm_engine.objectives.grpo.grpo_loss` with per-token advantages ``[N, T]``
(clipped ratio, ε / ε_high, β·k3 KL to the reference, ``loss_type`` aggregation grpo / bnpo /
dr_grpo / dapo, ``num_iterations`` passes): the group normalisation of GRPO is replaced by the
tree's advantages (no std scaling: TreeRL uses the raw value differences).

Metrics: GRPO's, plus the rollout's ``tokens_per_leaf`` / ``iid_tokens_per_leaf`` /
``token_saving`` / ``leaves`` (logged by the run).
"""

from __future__ import annotations

from .grpo import GRPOObjective

SHARED_WEIGHTS = ("sqrt", "once", "none")


class TreeGRPOObjective(GRPOObjective):
    """GRPO loss with per-token tree advantages from the batch (module docstring)."""

    name = "tree_grpo"
    # Rollout batches (the same recipe as grpo), drawn by the tree source (lrm_engine.train.rl_tree).
    batch_kind = "rollout"
    rollout_source = "tree"

    def __init__(self, beta: float = 0.04, epsilon: float = 0.2, epsilon_high: float | None = None,
                 loss_type: str = "grpo", max_completion_length: int | None = None,
                 ref_model: str | None = None, num_iterations: int = 1, shared_weight: str = "sqrt"):
        super().__init__(beta=beta, epsilon=epsilon, epsilon_high=epsilon_high, loss_type=loss_type,
                         scale_rewards=False, max_completion_length=max_completion_length,
                         ref_model=ref_model, num_iterations=num_iterations)
        if shared_weight not in SHARED_WEIGHTS:
            raise ValueError(f"tree_grpo: shared_weight must be one of {', '.join(SHARED_WEIGHTS)}, "
                             f"got {shared_weight!r}")
        self.shared_weight = shared_weight

    def advantages(self, batch):
        adv = batch.get("advantages")
        if adv is None or adv.dim() != 2:
            raise ValueError("tree_grpo: the batch needs per-token advantages [N, T] "
                             "(rollouts from lrm_engine.train.rl_tree.TreeRolloutSource)")
        return adv.float()

    def state_dict(self) -> dict:
        return super().state_dict() | {"shared_weight": self.shared_weight}


def make_tree_grpo_objective(**kwargs) -> TreeGRPOObjective:
    """Registry factory for ``objective=tree_grpo`` (keywords: see :class:`TreeGRPOObjective`)."""
    kwargs.pop("name", None)
    return TreeGRPOObjective(**kwargs)
