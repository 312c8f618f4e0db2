"""``step_dpo``: DPO on step-level pairs (Step-DPO, Lai et al. 2024).

A step-level pair is a context — the problem prompt plus the solution *prefix* (the steps
before the step in question, e.g. the path to a node of a search tree) — and two candidate next
steps: the chosen one (a correct step, e.g. a child with a high value / PRM score) and the
rejected one (a wrong sibling). Only the step's tokens are scored; the prefix is context:

    pi_w = sum_{t in chosen step} log pi(y_w[t] | prompt, prefix, y_w[<t])

and likewise ``pi_l``, ``ref_w``, ``ref_l``; the loss is DPO's sigmoid loss on the summed
log-ratios (:func:`lrm_engine.objectives.dpo.dpo_loss`, ``loss_type="sigmoid"``, optional label
smoothing). Everything else — reference model, valid pairs, reduction, metrics — is as for
``dpo``.

Batch: the ``pref`` layout of :mod:`lrm_engine.objectives.dpo`, built by
:class:`lrm_engine.train.pref_data.PrefDataset` from step records (``prompt``, ``prefix`` —
or Step-DPO's ``initial_reason_steps`` —, ``chosen``, ``rejected``): the context is ``prompt +
prefix``, the completion is the step text followed by ``completion_suffix`` (the step
delimiter, ``"\\n"`` by default; ``add_eos=False``: a step is not the end of the solution).
"""

from __future__ import annotations

from .dpo import DPOObjective


class StepDPOObjective(DPOObjective):
    """DPO on (prompt + prefix, chosen step, rejected step) (see the module docstring)."""

    name = "step_dpo"
    # Step-level preference pairs (lrm_engine.train.pref_data, step records).
    batch_kind = "step_pref"

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, ref_model: str | None = None):
        super().__init__(beta=beta, loss_type="sigmoid", label_smoothing=label_smoothing,
                         ref_model=ref_model)


def make_step_dpo_objective(**kwargs) -> StepDPOObjective:
    """Registry factory for ``objective=step_dpo`` (keywords: see :class:`StepDPOObjective`)."""
    kwargs.pop("name", None)
    return StepDPOObjective(**kwargs)
