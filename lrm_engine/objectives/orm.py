"""``orm``: outcome reward model loss — one label per finished solution, read at its last tag.

An ORM is trained with the PRM machinery (:mod:`lrm_engine.objectives.prm`) on a sequence laid
out exactly as the ``orm`` reward reads it at search time::

    <bos> prompt  step_0 TAG  step_1 TAG ...  step_{n-1} TAG
                                                         ^ the only labelled position

The completion is split into steps at the task's step delimiter and only the TAG after the
*final* step carries the solution's label (1 = correct). ``reward=orm`` evaluates the same head
at the last token of a terminal node's step tag (:class:`~lrm_engine.rewards.outcome.OutcomeRM`),
so what is trained is what is read. The head (``head``) is any of the PRM's:

- ``prm_token``: P(good) = softmax over the LM head's rows of ``good_token`` / ``bad_token``;
- ``prm_head``: a two-class head, class 1 = correct;
- ``value_head``: ``sigmoid`` of a one-output head (``value_loss``: mse or bce).

Loss, exactly (with ``F`` the set of final tags of the batch, one per solution and ``y`` its
label): ``-(1/|F|) sum_F [y log p + (1 - y) log(1 - p)]`` for the two token/class heads, and the
value head's MSE/BCE — the PRM formulas over ``F`` instead of every tag. The model folder gets
``orm_config.json`` (kind ``orm``, the head, its tokens and the step tag: the read-out).
"""

from __future__ import annotations

from .prm import PRMObjective


class ORMObjective(PRMObjective):
    """The PRM losses at each solution's final tag only (the data keeps only that tag)."""

    name = "orm"
    # Batches: PRM batches whose tag_mask holds the final tag only (lrm_engine.train.orm_data).
    batch_kind = "orm"
    # The read-out file written into the model folder.
    config_file = "orm_config.json"

    def __init__(self, head: str = "prm_token", good_token: str = "+", bad_token: str = "-",
                 label_mode: str = "hard", hard_threshold: float = 0.5, full_logits: bool = False,
                 value_loss: str = "mse", good_token_id: int | None = None,
                 bad_token_id: int | None = None):
        super().__init__(good_token=good_token, bad_token=bad_token, label_mode=label_mode,
                         hard_threshold=hard_threshold, full_logits=full_logits,
                         good_token_id=good_token_id, bad_token_id=bad_token_id, readout="tag",
                         head=head, value_loss=value_loss)


def make_orm_objective(**kwargs) -> ORMObjective:
    """Registry factory for ``objective=orm`` (keyword arguments: see :class:`ORMObjective`)."""
    kwargs.pop("name", None)
    return ORMObjective(**kwargs)
